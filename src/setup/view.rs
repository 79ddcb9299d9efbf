//! Card view models of the wizard: one per step, the completion card, check results and
//! `setup status`. No card carries a secret: the completion card offers a Reveal link.

use serde_json::{Value, json};

use super::state::{AppSlot, RecordSlot, Step, Wizard};
use super::store::{AuditEntry, SetupRow};
use crate::app::App;
use crate::core::Reply;
use crate::integration::AuthType;
use crate::integration::doctor::{CheckOutcome, Status};

/// Data every button of a setup card carries.
fn action(
    title: &str,
    verb: &str,
    style: &str,
    row: &SetupRow,
    extra: Value,
    with_inputs: bool,
) -> Value {
    let mut data = json!({"setup_id": row.setup_id, "version": row.version});
    if let (Some(data), Value::Object(extra)) = (data.as_object_mut(), extra) {
        data.extend(extra);
    }
    json!({"title": title, "verb": verb, "style": style, "data": data, "with_inputs": with_inputs})
}

fn back_cancel(row: &SetupRow) -> Vec<Value> {
    vec![
        action("Back", "setup.back", "default", row, json!({}), false),
        action(
            "Cancel setup",
            "setup.cancel",
            "destructive",
            row,
            json!({}),
            false,
        ),
    ]
}

fn input(kind: &str, id: &str, label: &str, value: &str, placeholder: Option<&str>) -> Value {
    let password = kind == "password";
    json!({"toggle": kind == "toggle", "choice": false, "password": password, "id": id,
           "label": label, "value": if password { None } else { Some(value) },
           "placeholder": placeholder, "choices": [], "expanded": false, "error": null,
           "error_details": null})
}

fn choice(id: &str, label: &str, value: &str, choices: &[(&str, &str)], expanded: bool) -> Value {
    let choices: Vec<Value> = choices
        .iter()
        .map(|(value, title)| json!({"title": title, "value": value}))
        .collect();
    json!({"toggle": false, "choice": true, "password": false, "id": id, "label": label,
           "value": value, "placeholder": null, "choices": choices, "expanded": expanded,
           "error": null, "error_details": null})
}

fn mode_choice(create: &str, existing: &str) -> Value {
    choice(
        "mode",
        "How",
        "create",
        &[("create", create), ("existing", existing)],
        true,
    )
}

/// The repository id the admin center needs: configured, entered on the completion card, or
/// the instance name of a `*.service-now.com` host. `None` when it must be asked for (an IP
/// address or a custom domain says nothing about it).
pub fn repository_id(app: &App, data: &super::state::Collected) -> Option<String> {
    app.settings
        .setup
        .repository_id
        .clone()
        .or_else(|| data.repository_id.clone())
        .or_else(|| {
            let host = app.settings.servicenow.instance_url.as_ref()?.host_str()?;
            instance_name(host)
        })
}

/// `dev12345` for `dev12345.service-now.com`; `None` for any other host.
pub fn instance_name(host: &str) -> Option<String> {
    let host = host.to_ascii_lowercase();
    let name = host.strip_suffix(".service-now.com")?;
    (!name.is_empty() && !name.contains('.')).then(|| name.to_owned())
}

/// The card of the wizard's current state. `pick` lists existing records for record steps;
/// `note` is shown first (e.g. "this card was already answered").
pub fn step_card(
    app: &App,
    row: &SetupRow,
    pick: &[(String, String)],
    note: Option<&str>,
) -> Reply {
    step_card_with(app, row, pick, note, true)
}

/// [`step_card`]; `can_repair` says whether the bot's ServiceNow account may apply the
/// cross-scope fix (else the card only explains it).
pub fn step_card_with(
    app: &App,
    row: &SetupRow,
    pick: &[(String, String)],
    note: Option<&str>,
    can_repair: bool,
) -> Reply {
    let wizard = &row.wizard;
    let data = &wizard.data;
    let (position, total) = wizard.position();
    let progress = format!("Setup · step {position} of {total}");
    let mut notes: Vec<String> = note.map(str::to_owned).into_iter().collect();
    notes.extend(data.notes.iter().cloned());
    let mut facts: Vec<Value> = Vec::new();
    let mut inputs: Vec<Value> = Vec::new();
    let mut actions: Vec<Value> = Vec::new();
    let prefix = &app.settings.setup.app_name_prefix;
    let instance = app
        .settings
        .servicenow
        .instance_url
        .as_ref()
        .map(|u| u.as_str().trim_end_matches('/').to_owned())
        .unwrap_or_default();
    let tenant = data.tenant.clone().unwrap_or_default();
    if wizard.busy_since.is_some() {
        let text = format!(
            "I am working on **{}** (creating and verifying). This card shows the result when it is done; press Refresh to look again.",
            wizard.step.title()
        );
        return step_reply(
            "Working on it",
            &progress,
            "default",
            &text,
            facts,
            notes,
            wizard,
            inputs,
            vec![action(
                "Refresh",
                "setup.refresh",
                "default",
                row,
                json!({}),
                false,
            )],
        );
    }
    let text = match wizard.step {
        Step::Consent => {
            actions.push(action(
                "Agree",
                "setup.agree",
                "positive",
                row,
                json!({}),
                false,
            ));
            actions.push(action(
                "Cancel setup",
                "setup.cancel",
                "destructive",
                row,
                json!({}),
                false,
            ));
            "I will set up the Microsoft 365 support integration with you, step by step, and verify every step live. For each piece you choose **Create it for me** or **Use an existing one**; I look up what exists first and never create anything twice.\n\nWith AAD Auth I create or check: three Entra ID apps (outbound, inbound REST API, REST user), the ServiceNow outbound OAuth provider, the OIDC provider configuration, the OIDC entity, and the integration user with the role incident_manager. Basic Auth needs only the outbound app, the OAuth provider and an integration user with a password.\n\nI use: Microsoft Graph (Application.ReadWrite.All, to create apps and secrets) and the bot's ServiceNow account (admin, Table API). Secrets are entered only here, in password fields, and stored encrypted; they are never shown in chat again (a one-time Reveal page, after a Microsoft sign-in, shows them once).".to_owned()
        }
        Step::Environment => {
            inputs.push(input(
                "toggle",
                "test_environment",
                "This is a test environment (you can switch it off later)",
                if data.test_environment {
                    "true"
                } else {
                    "false"
                },
                None,
            ));
            let auth = match data.auth_type {
                Some(AuthType::Basic) => "basic",
                _ => "aad",
            };
            inputs.push(choice(
                "auth",
                "Does your instance allow Basic authentication for inbound connections?",
                auth,
                &[
                    ("aad", "No: AAD Auth (Entra ID tokens, three apps)"),
                    (
                        "basic",
                        "Yes: Basic Auth (integration user with a password)",
                    ),
                ],
                true,
            ));
            actions.push(action(
                "Start setup",
                "setup.environment",
                "positive",
                row,
                json!({}),
                true,
            ));
            actions.extend(back_cancel(row));
            "Choose the environment and the setup type.".to_owned()
        }
        Step::Tenant => {
            inputs.push(input(
                "text",
                "domain",
                "Microsoft 365 tenant domain",
                &tenant,
                Some("contoso.onmicrosoft.com"),
            ));
            actions.push(action(
                "Verify and continue",
                "setup.tenant",
                "positive",
                row,
                json!({}),
                true,
            ));
            actions.extend(back_cancel(row));
            "Enter your Microsoft 365 tenant domain. I check it live against Entra ID (its OpenID metadata) and note the tenant id.".to_owned()
        }
        Step::OutboundApp | Step::InboundApp | Step::RestUserApp => {
            let slot = AppSlot::of(wizard.step).unwrap_or(AppSlot::Outbound);
            let name = format!("{prefix} {}", slot.name_suffix());
            if let Some(app_record) = data.app(slot) {
                facts.push(json!({"title": "Recorded client id", "value": app_record.client_id}));
            }
            inputs.push(mode_choice(
                &format!("Create it for me (app \"{name}\")"),
                "Use an existing app registration",
            ));
            inputs.push(input(
                "text",
                "client_id",
                "Existing app: Application (client) ID",
                "",
                Some("00000000-0000-0000-0000-000000000000"),
            ));
            inputs.push(input(
                "password",
                "client_secret",
                "Existing app: client secret value",
                "",
                Some("the secret's Value, not its ID"),
            ));
            actions.push(action(
                "Continue",
                "setup.app",
                "positive",
                row,
                json!({}),
                true,
            ));
            actions.extend(back_cancel(row));
            match slot {
                AppSlot::Outbound => format!("The **outbound app** lets ServiceNow call Microsoft (client credentials against https://login.microsoftonline.com/{tenant}/oauth2/token). It is single-tenant with the Web redirect URI {instance}/oauth_redirect.do. I verify it with a live v1 token request."),
                AppSlot::Inbound => "The **inbound REST API app** is what Microsoft uses to call your instance. Its access tokens must be **v1** (requestedAccessTokenVersion null or 1), because the OIDC provider reads the appid claim. I verify both live.".to_owned(),
                AppSlot::RestUser => "The **REST-user app** identifies the integration user: its client id becomes the user's User ID. I verify it with a live token request.".to_owned(),
            }
        }
        Step::OauthProvider | Step::OidcProvider | Step::OidcEntity => {
            let slot = RecordSlot::of(wizard.step).unwrap_or(RecordSlot::OauthProvider);
            let choices: Vec<(&str, &str)> = pick
                .iter()
                .map(|(id, label)| (id.as_str(), label.as_str()))
                .collect();
            if choices.is_empty() {
                // Nothing to pick: no choice set (an empty choice is invalid in Adaptive Cards).
                inputs.push(choice(
                    "mode",
                    "How",
                    "create",
                    &[("create", "Create it for me")],
                    true,
                ));
                notes.push(format!(
                    "No {} records exist on the instance yet, so there is none to pick.",
                    slot.table()
                ));
            } else {
                inputs.push(mode_choice(
                    "Create it for me (or correct the one that exists)",
                    "Use an existing record",
                ));
                let selected = data
                    .record(slot)
                    .map(|r| r.sys_id.clone())
                    .unwrap_or_default();
                inputs.push(choice(
                    "record",
                    "Existing record",
                    &selected,
                    &choices,
                    false,
                ));
            }
            actions.push(action(
                "Continue",
                "setup.record",
                "positive",
                row,
                json!({}),
                true,
            ));
            actions.extend(back_cancel(row));
            match slot {
                RecordSlot::OauthProvider => format!(
                    "The **outbound OAuth provider** (System OAuth > Application Registry, third-party provider): the outbound app's client id and secret, grant type Client Credentials, token URL https://login.microsoftonline.com/{tenant}/oauth2/token, redirect URL {instance}/oauth_redirect.do. I read it back and compare every field."
                ),
                RecordSlot::OidcProvider => format!(
                    "The **OIDC provider configuration**: metadata URL https://login.microsoftonline.com/{tenant}/.well-known/openid-configuration, user claim appid, user field User ID."
                ),
                RecordSlot::OidcEntity => format!(
                    "The **OIDC entity** {tenant}_application_inbound_api: the inbound app's client id and secret, the provider configuration above, redirect URL {instance}/oauth_redirect.do."
                ),
            }
        }
        Step::IntegrationUser => {
            let basic = data.auth_type == Some(AuthType::Basic);
            let default_name = if basic {
                data.integration_user
                    .clone()
                    .unwrap_or_else(|| "m365_integration".to_owned())
            } else {
                data.app(AppSlot::RestUser)
                    .map(|a| a.client_id.clone())
                    .unwrap_or_default()
            };
            inputs.push(mode_choice(
                if basic {
                    "Create it for me (with a generated password)"
                } else {
                    "Create it for me"
                },
                "Use an existing user",
            ));
            inputs.push(input("text", "user_name", "User ID", &default_name, None));
            if basic {
                inputs.push(input(
                    "password",
                    "password",
                    "Existing user: password",
                    "",
                    None,
                ));
            }
            actions.push(action(
                "Continue",
                "setup.user",
                "positive",
                row,
                json!({}),
                true,
            ));
            actions.extend(back_cancel(row));
            if basic {
                "The **integration user** Microsoft signs in with (Basic Auth): web service access only, role incident_manager.".to_owned()
            } else {
                "The **integration user**: User ID = the REST-user app's client id, web service access only, role incident_manager. I check the role and the flag.".to_owned()
            }
        }
        Step::CrossScope => {
            actions.push(action(
                "Check again",
                "setup.cross_scope",
                "positive",
                row,
                json!({"repair": false}),
                false,
            ));
            if can_repair {
                actions.push(action(
                    "Fix it for me",
                    "setup.cross_scope",
                    "default",
                    row,
                    json!({"repair": true}),
                    false,
                ));
            }
            actions.extend(back_cancel(row));
            format!(
                "The app (scope {}) reads **oauth_entity** from its own scope. That works only when the table is accessible from all application scopes with **Can read** ticked; a REST caller never sees the refusal, so I read the table's configuration.{}",
                app.settings.servicenow.app_scope,
                if can_repair {
                    ""
                } else {
                    " The bot's ServiceNow account lacks the admin role, so it cannot apply the fix: apply it by hand, then Check again."
                }
            )
        }
        Step::Complete => {
            return complete_card(app, row, None, None);
        }
        Step::Cancelled => {
            let made = super::effects::made_by(data);
            let facts: Vec<Value> = made
                .iter()
                .map(|m| {
                    json!({"title": match m {
                    super::effects::Made::App { .. } => "Entra app".to_owned(),
                    super::effects::Made::Record { table, .. } => format!("ServiceNow {table}"),
                }, "value": m.describe()})
                })
                .collect();
            let text = if made.is_empty() {
                "This setup was cancelled; its secrets were deleted. Nothing it created still exists (apps and records it found, reused or you picked are never deleted). Type **setup** to start again."
            } else {
                "This setup was cancelled; its secrets were deleted. It created the apps and records below, which still exist. **Delete what this setup created** removes exactly these, each after checking it is still what this setup made; apps and records it found, reused or you picked are not listed and are never deleted. Type **setup** to start again."
            };
            let actions = if made.is_empty() {
                Vec::new()
            } else {
                vec![action(
                    "Delete what this setup created",
                    "setup.delete_created",
                    "destructive",
                    row,
                    json!({}),
                    false,
                )]
            };
            return step_reply(
                "Setup cancelled",
                "Setup · cancelled",
                "warning",
                text,
                facts,
                notes,
                wizard,
                Vec::new(),
                actions,
            );
        }
    };
    let tone = if wizard.error.is_some() {
        "attention"
    } else {
        "default"
    };
    step_reply(
        wizard.step.title(),
        &progress,
        tone,
        &text,
        facts,
        notes,
        wizard,
        inputs,
        actions,
    )
}

#[allow(clippy::too_many_arguments)]
fn step_reply(
    title: &str,
    progress: &str,
    tone: &str,
    text: &str,
    facts: Vec<Value>,
    notes: Vec<String>,
    wizard: &Wizard,
    mut inputs: Vec<Value>,
    actions: Vec<Value>,
) -> Reply {
    let mut error = Value::Null;
    if let Some(step_error) = &wizard.error {
        let beside = step_error
            .field
            .as_deref()
            .and_then(|field| inputs.iter_mut().find(|i| i["id"].as_str() == Some(field)));
        match beside {
            Some(field_input) => {
                // One message, under the field; the top box only counts.
                let message = match &step_error.fix {
                    Some(fix) => {
                        format!("{}. Fix: {fix}", step_error.message.trim_end_matches('.'))
                    }
                    None => step_error.message.clone(),
                };
                field_input["error"] = json!(message);
                field_input["error_details"] = json!(step_error.details);
                error = json!({"message": "1 field needs attention", "fix": null, "details": null});
            }
            None => {
                error = json!({"message": step_error.message, "fix": step_error.fix,
                               "details": step_error.details});
            }
        }
    }
    Reply::Card {
        template: "setup_step",
        data: json!({
            "title": title, "progress": progress, "tone": tone, "text": text,
            "facts": facts, "notes": notes, "error": error, "inputs": inputs, "actions": actions,
        }),
    }
}

/// The completion card of the admin who ran setup: what the bot now does, what is left for a
/// person in ServiceNow, a Reveal button (`reveal_url`, or one that asks for a new link)
/// instead of any secret, and the admin-center values collapsed.
pub fn complete_card(
    app: &App,
    row: &SetupRow,
    reveal_url: Option<&str>,
    handover_error: Option<&str>,
) -> Reply {
    complete_card_with(app, row, reveal_url, handover_error, None)
}

/// [`complete_card`], with the error of a refused Repository ID.
pub fn complete_card_with(
    app: &App,
    row: &SetupRow,
    reveal_url: Option<&str>,
    handover_error: Option<&str>,
    repository_error: Option<&str>,
) -> Reply {
    let data = &row.wizard.data;
    let mut actions = vec![match reveal_url {
        Some(url) => open_url("Reveal the secrets (once)", url),
        None => action(
            "New Reveal link",
            "setup.reveal",
            "default",
            row,
            json!({}),
            false,
        ),
    }];
    actions.push(action(
        "Run tests",
        "setup.run_tests",
        "positive",
        row,
        json!({}),
        false,
    ));
    if data.handed_over_to.is_some() {
        actions.push(action(
            "Revoke hand-over",
            "setup.handover_revoke",
            "destructive",
            row,
            json!({}),
            false,
        ));
    } else {
        actions.push(action(
            "Hand over",
            "setup.handover",
            "default",
            row,
            json!({}),
            true,
        ));
    }
    actions.push(action(
        "Start a new setup",
        "setup.new",
        "default",
        row,
        json!({}),
        false,
    ));
    let ask_repository = repository_id(app, data).is_none().then(|| {
        json!({
            "reason": "Your instance's address is not a *.service-now.com name, so I cannot tell its Repository ID (the instance name, as in <name>.service-now.com). Enter the name the admin-center step should use for this instance.",
            "action": action("Save Repository ID", "setup.repository", "default", row, json!({}), true),
        })
    });
    let reveal_text = match reveal_url {
        Some(_) => format!(
            "The secrets are not shown in chat. **Reveal** opens a one-time page on the bot, valid {} minutes, after you sign in with your Microsoft 365 account; it shows them once and records who viewed them.",
            super::reveal::REVEAL_MINUTES
        ),
        None => "The secrets are not shown in chat. **New Reveal link** gives you a one-time page that shows them after you sign in with your Microsoft 365 account.".to_owned(),
    };
    let mut card = completion_data(app, row, reveal_text);
    card["title"] = json!("Setup complete: the bot now runs the integration");
    card["ask_repository"] = json!(ask_repository);
    card["repository_error"] = json!(repository_error);
    card["handover"] = json!(data.handed_over_to.is_none());
    card["handover_error"] = json!(handover_error);
    card["handover_email"] = json!("");
    card["handed_over_to"] = json!(data.handed_over_to.as_ref().map(|to| format!(
        "Handed over to {to}. A hand-over works once; Revoke hand-over cancels its unused link and allows another."
    )));
    card["actions"] = json!(actions);
    Reply::Card {
        template: "setup_complete",
        data: card,
    }
}

/// The card the hand-over recipient gets: the same facts and a Reveal button bound to them;
/// no secret and no setup action.
pub fn handover_card(app: &App, row: &SetupRow, reveal_url: &str, from: &str) -> Reply {
    let mut card = completion_data(
        app,
        row,
        format!(
            "{from} handed the Microsoft 365 support integration over to you. The secrets are not shown in chat: **Reveal** opens a one-time page on the bot, valid {} minutes, after you sign in with your Microsoft 365 admin account (it needs an admin role that may manage support requests).",
            super::reveal::REVEAL_MINUTES
        ),
    );
    card["title"] = json!("The Microsoft 365 support integration was handed over to you");
    card["ask_repository"] = Value::Null;
    card["repository_error"] = Value::Null;
    card["handover"] = json!(false);
    card["handover_error"] = Value::Null;
    card["handover_email"] = json!("");
    card["handed_over_to"] = Value::Null;
    card["actions"] = json!([open_url("Reveal the secrets (once)", reveal_url)]);
    Reply::Card {
        template: "setup_complete",
        data: card,
    }
}

fn open_url(title: &str, url: &str) -> Value {
    json!({"title": title, "url": url, "style": "positive", "verb": null, "data": null, "with_inputs": false})
}

/// What the bot made that the ServiceNow Setup page asks for: (label, exact name).
pub fn made_for_servicenow_setup(data: &super::state::Collected) -> Vec<(&'static str, String)> {
    let name = |slot: RecordSlot| {
        data.record(slot)
            .map(|r| r.name.clone())
            .unwrap_or_else(|| "(not recorded)".to_owned())
    };
    let mut made = vec![(
        "OAuth profile (outbound OAuth provider)",
        name(RecordSlot::OauthProvider),
    )];
    if data.auth_type != Some(AuthType::Basic) {
        made.push((
            "OIDC entity (External OIDC provider)",
            name(RecordSlot::OidcEntity),
        ));
    }
    made.push((
        "Integration user",
        data.integration_user
            .clone()
            .unwrap_or_else(|| "(not recorded)".to_owned()),
    ));
    made
}

/// The parts every completion card shares: what the bot does now, what is left in ServiceNow,
/// and the admin-center values (collapsed; never a secret).
fn completion_data(app: &App, row: &SetupRow, reveal_text: String) -> Value {
    let data = &row.wizard.data;
    let aad = data.auth_type != Some(AuthType::Basic);
    let on_reveal = "(on the Reveal page, not in chat)";
    let client = |slot: AppSlot| {
        data.app(slot)
            .map(|a| a.client_id.clone())
            .unwrap_or_default()
    };
    let endpoint = app
        .settings
        .servicenow
        .instance_url
        .as_ref()
        .map(|u| u.as_str().trim_end_matches('/').to_owned())
        .unwrap_or_default();
    let mut values = vec![
        json!({"label": "Application ID to issue Auth Token (outbound app id)", "value": client(AppSlot::Outbound)}),
        json!({"label": "Repository ID", "value": repository_id(app, data).unwrap_or_else(|| "(enter it below)".to_owned())}),
        json!({"label": "Endpoint", "value": endpoint}),
        json!({"label": "Authentication type", "value": if aad { "AAD Auth" } else { "Basic Auth" }}),
    ];
    if aad {
        values.push(json!({"label": "Client ID", "value": client(AppSlot::Inbound)}));
        values.push(json!({"label": "Client secret", "value": on_reveal}));
        values.push(json!({"label": "Rest username", "value": client(AppSlot::RestUser)}));
        values.push(json!({"label": "Rest user password", "value": on_reveal}));
    } else {
        values.push(json!({"label": "Client ID", "value": "(not used with Basic Auth)"}));
        values.push(json!({"label": "Client secret", "value": "(not used with Basic Auth)"}));
        values.push(json!({"label": "Rest username", "value": data.integration_user.clone().unwrap_or_default()}));
        values.push(json!({"label": "Rest user password", "value": on_reveal}));
    }
    let mut advice = vec![
        "Select Basic information > Internal support tool > ServiceNow and enter the outbound app id; then Repositories > New repository with the other values.".to_owned(),
        "Optional: if your network limits internet access, allow the bot's outbound address; the retired Microsoft service's IP list no longer applies.".to_owned(),
    ];
    if data.test_environment {
        advice.push("This setup is marked as a test environment.".to_owned());
    }
    let made: Vec<Value> = made_for_servicenow_setup(data)
        .into_iter()
        .map(|(label, value)| json!({"label": label, "value": value}))
        .collect();
    json!({
        "text": "Microsoft retired its hosted service for this integration on 2025-05-30. The bot now plays that part: it calls ServiceNow and receives ServiceNow's calls itself, with the credentials this setup made, which it keeps encrypted. Every step is verified; Run tests checks everything again, live.",
        "reveal_text": reveal_text,
        "remaining": {
            "text": format!(
                "Left for you: open **Microsoft 365 support > Setup** in [ServiceNow]({endpoint}) and pick what I made, by these exact names:"
            ),
            "items": made,
        },
        "admin_center": {
            "title": "For the guide's admin-center step (retired by Microsoft on 2025-05-30)",
            "where": "Microsoft 365 admin center > Settings > Org settings > Organization profiles",
            "values": values,
            "advice": advice,
        },
        "notes": data.notes,
    })
}

fn mark(status: Status) -> (&'static str, &'static str) {
    match status {
        Status::Pass => ("✅", "Good"),
        Status::Fail => ("❌", "Attention"),
        Status::Skip => ("⏭️", "Warning"),
    }
}

/// Check results (Run tests, doctor).
pub fn results_card(title: &str, outcomes: &[CheckOutcome], actions: Vec<Value>) -> Reply {
    let failed = outcomes.iter().filter(|o| o.status == Status::Fail).count();
    let passed = outcomes.iter().filter(|o| o.status == Status::Pass).count();
    let skipped = outcomes.len() - failed - passed;
    let checks: Vec<Value> = outcomes
        .iter()
        .map(|o| {
            let (mark, color) = mark(o.status);
            json!({"mark": mark, "title": o.title, "detail": o.detail, "color": color,
                   "fix": if o.status == Status::Pass { None } else { o.fix.clone() }})
        })
        .collect();
    let summary = if outcomes.is_empty() {
        "No checks ran: the integration is not known yet.".to_owned()
    } else {
        format!("{passed} passed, {failed} failed, {skipped} not verified")
    };
    Reply::Card {
        template: "setup_results",
        data: json!({
            "title": title,
            "summary": summary,
            "tone": if failed > 0 || outcomes.is_empty() { "attention" } else { "good" },
            "facts": [],
            "checks": checks,
            "lines": [],
            "actions": actions,
        }),
    }
}

/// The outcome of `rotate-secret`: one line per step, what to do now.
pub fn rotation_card(
    target: crate::integration::rotate::SecretTarget,
    report: &super::rotate::RotationReport,
) -> Reply {
    let checks: Vec<Value> = report
        .steps
        .iter()
        .map(|(ok, line)| {
            let (mark, title, color) = if *ok {
                ("✅", "Done", "Good")
            } else {
                ("❌", "Failed", "Attention")
            };
            json!({"mark": mark, "title": title, "detail": line, "color": color, "fix": null})
        })
        .collect();
    let title = if report.rotated {
        format!("The {}'s client secret was rotated", target.label())
    } else {
        format!("The {}'s client secret was not rotated", target.label())
    };
    let mut facts = Vec::new();
    if let Some(next) = &report.next_step {
        facts.push(json!({"title": "Next step", "value": next}));
    }
    Reply::Card {
        template: "setup_results",
        data: json!({
            "title": title,
            "summary": if report.rotated {
                "The new secret is in use everywhere and verified live."
            } else {
                "The old secret is kept; here is exactly what happened."
            },
            "tone": if report.rotated { "good" } else { "attention" },
            "facts": facts,
            "checks": checks,
            "lines": [],
            "actions": [],
        }),
    }
}

/// Buttons under Run-tests results.
pub fn results_actions(row: &SetupRow) -> Vec<Value> {
    vec![
        action(
            "Run tests again",
            "setup.run_tests",
            "positive",
            row,
            json!({}),
            false,
        ),
        action(
            "Show the values",
            "setup.show",
            "default",
            row,
            json!({}),
            false,
        ),
    ]
}

/// How many audit entries `setup status` shows (collapsed).
pub const AUDIT_SHOWN: i64 = 5;

/// A verified check run again for `setup status`.
#[derive(Debug, Clone)]
pub struct CheckNow {
    /// Doctor check id.
    pub id: String,
    /// Its title, as Run tests shows it.
    pub title: String,
    /// What it finds now.
    pub detail: String,
    /// True when the verdict differs from the recorded one.
    pub drifted: bool,
}

/// The position of a check in the wizard's step order (unknown checks last).
fn check_order(id: &str) -> usize {
    super::state::sequence(Some(AuthType::Aad))
        .iter()
        .flat_map(|step| {
            step.checks(AuthType::Aad)
                .iter()
                .chain(step.checks(AuthType::Basic))
        })
        .position(|check| *check == id)
        .unwrap_or(usize::MAX)
}

/// The title of a check when it was not run now: its step's title, and which part.
fn check_title(id: &str) -> String {
    let step = [Some(AuthType::Aad), Some(AuthType::Basic)]
        .into_iter()
        .flat_map(|auth| {
            super::state::sequence(auth)
                .iter()
                .map(move |step| (step, auth.unwrap_or(AuthType::Aad)))
        })
        .find(|(step, auth)| step.checks(*auth).contains(&id))
        .map(|(step, _)| step.title());
    match (step, id.rsplit_once('.').map(|(_, part)| part)) {
        (Some(title), Some("token")) => format!("{title}: gets a token"),
        (Some(title), Some("registration")) => format!("{title}: registration"),
        (Some(title), Some("basic_login")) => format!("{title}: Basic sign-in"),
        (Some(title), Some("inbound_flow")) => format!("{title}: Microsoft's call path"),
        (Some(title), _) => title.to_owned(),
        (None, _) => id.replace(['_', '.'], " "),
    }
}

fn when(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default()
}

fn branch(wizard: &Wizard) -> &'static str {
    match wizard.data.auth_type {
        Some(AuthType::Basic) => "Basic Auth",
        Some(AuthType::Aad) => "AAD Auth",
        None => "not chosen yet",
    }
}

/// `setup status`: the live integration (verified checks with drift) and the setup in
/// progress, both when both exist; the last audit entries collapsed.
pub fn status_card(
    live: Option<&SetupRow>,
    in_progress: Option<&SetupRow>,
    now: &[CheckNow],
    audit: &[AuditEntry],
    reveals: &[super::reveal::RevealRow],
) -> Reply {
    let mut facts = Vec::new();
    if let Some(row) = live {
        facts.push(json!({"title": "Live integration", "value": format!(
            "{}, completed {} (setup {}, started by {})",
            branch(&row.wizard), when(row.updated_at), row.setup_id, row.started_by
        )}));
        let viewed: Vec<String> = reveals
            .iter()
            .filter_map(|link| {
                let at = link.used_at?;
                Some(format!(
                    "{} by {} ({} link of {})",
                    when(at),
                    link.viewed_by.as_deref().unwrap_or("?"),
                    link.purpose,
                    link.binding.label
                ))
            })
            .collect();
        facts.push(
            json!({"title": "Secrets viewed", "value": if viewed.is_empty() {
                "not yet (no Reveal link was opened)".to_owned()
            } else {
                viewed.join("; ")
            }}),
        );
    }
    if let Some(row) = in_progress {
        let (position, total) = row.wizard.position();
        facts.push(json!({"title": if live.is_some() { "New setup in progress" } else { "Setup in progress" },
            "value": format!(
                "step {position} of {total}: {} ({}, started by {}, last change {})",
                row.wizard.step.title(), branch(&row.wizard), row.started_by, when(row.updated_at)
            )}));
    }
    let verified = live.or(in_progress);
    let mut recorded = verified
        .map(|row| row.wizard.data.verified.iter().collect::<Vec<_>>())
        .unwrap_or_default();
    // In the order of the wizard's steps, as Run tests lists them.
    recorded.sort_by_key(|(id, _)| check_order(id));
    let checks: Vec<Value> = recorded
        .into_iter()
        .map(|(id, verdict)| {
            let found = now.iter().find(|check| &check.id == id);
            let title = found.map_or_else(|| check_title(id), |check| check.title.clone());
            let (mark, color) = match (found, verdict.status.as_str()) {
                (Some(check), _) if check.drifted => ("⚠️", "Attention"),
                (_, "pass") => ("✅", "Good"),
                _ => ("❌", "Attention"),
            };
            let detail = match found {
                Some(check) if check.drifted => format!(
                    "drifted: verified {} at {}, now: {}",
                    verdict.status,
                    when(verdict.at),
                    check.detail
                ),
                Some(check) => format!(
                    "{} (verified {}; unchanged now)",
                    check.detail,
                    when(verdict.at)
                ),
                None => format!("{} (verified {})", verdict.detail, when(verdict.at)),
            };
            json!({"mark": mark, "title": title, "detail": detail, "fix": null, "color": color})
        })
        .collect();
    let drifted = now.iter().filter(|check| check.drifted).count();
    let mut summary = match live {
        Some(_) => format!(
            "Live integration: {} verified, {drifted} drifted since.",
            checks.len()
        ),
        None => format!("{} verified so far, {drifted} drifted since.", checks.len()),
    };
    if let Some(row) = in_progress {
        let (position, total) = row.wizard.position();
        summary.push_str(&format!(
            " {} in progress: step {position} of {total}.",
            if live.is_some() {
                "A new setup is"
            } else {
                "Setup is"
            }
        ));
    }
    let lines: Vec<String> = audit
        .iter()
        .map(|e| {
            format!(
                "{} · {} · {} · {}{}",
                when(e.at),
                e.actor,
                e.action,
                e.outcome,
                if e.detail.is_empty() {
                    String::new()
                } else {
                    format!(" · {}", e.detail)
                }
            )
        })
        .collect();
    Reply::Card {
        template: "setup_results",
        data: json!({
            "title": "Setup status",
            "summary": summary,
            "tone": if drifted > 0 { "warning" } else { "default" },
            "facts": facts,
            "checks": checks,
            "lines": lines,
            "lines_title": format!("Audit trail (last {})", lines.len()),
            "actions": [],
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::instance_name;

    #[test]
    fn the_instance_name_comes_only_from_service_now_com_hosts() {
        assert_eq!(
            instance_name("dev12345.service-now.com").as_deref(),
            Some("dev12345")
        );
        assert_eq!(
            instance_name("Contoso.Service-Now.com").as_deref(),
            Some("contoso")
        );
        for host in [
            "127.0.0.1",
            "servicenow.contoso.com",
            "a.b.service-now.com",
            "service-now.com",
            "[::1]",
        ] {
            assert_eq!(instance_name(host), None, "{host}");
        }
    }
}
