//! Commands and card actions: role check, 1:1 only, input validation, the versioned write
//! that lets exactly one submit through, the effect, the next card.

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::crypto::SecretBox;
use super::effects;
use super::reveal::{self, Binding};
use super::state::{
    AppChoice, Input, RecordChoice, RecordSlot, Rejection, SecretSlot, Secrets, Step, StepError,
    UserChoice, Wizard, transition,
};
use super::store::{self, AuditEntry, SetupRow, status};
use super::view;
use crate::app::App;
use crate::core::command::Command;
use crate::core::{InboundEvent, Reply, Tone};
use crate::db::now_millis;
use crate::identity::{self, ChatUser, RoleNeed};
use crate::integration::AuthType;

/// The note on a card answered twice (double click, retried delivery, second admin).
pub const ALREADY_ANSWERED: &str = "That card was already answered (a double click, a retried delivery or another admin); this is where the setup is now.";

fn notice(tone: Tone, title: &str, text: &str, next: Option<&str>) -> Vec<Reply> {
    vec![Reply::notice(tone, title, text, next)]
}

fn storage_failure(err: &dyn std::fmt::Display) -> Vec<Reply> {
    tracing::error!(error = %err, "setup: storage failed");
    notice(
        Tone::Attention,
        "Setup could not save its progress",
        "The bot's database refused the change; nothing was changed.",
        Some(
            "Try again in a moment; if it keeps failing, ask the bot's operator to check the database.",
        ),
    )
}

/// Ready to run setup: the key and the bot's upstream access are configured.
fn preconditions(app: &App) -> Result<SecretBox, Vec<Reply>> {
    let secret_box = SecretBox::new(app.settings.setup.encryption_key.as_ref()).map_err(|err| {
        notice(
            Tone::Attention,
            "Setup needs an encryption key",
            &err.to_string(),
            Some("Ask the bot's operator to set setup.encryption_key and restart the bot."),
        )
    })?;
    if app.upstreams.servicenow.is_none() || app.settings.servicenow.instance_url.is_none() {
        return Err(notice(
            Tone::Attention,
            "Setup needs ServiceNow access",
            "The bot has no ServiceNow instance URL or credentials.",
            Some(
                "Ask the bot's operator to configure [servicenow] instance_url, username and password.",
            ),
        ));
    }
    Ok(secret_box)
}

fn actor_label(user: &ChatUser) -> String {
    format!("{} ({})", user.user_name, user.platform.user_id)
}

async fn audit(app: &App, setup_id: &str, actor: &str, action: &str, outcome: &str, detail: &str) {
    let entry = AuditEntry {
        setup_id: setup_id.to_owned(),
        at: now_millis(),
        actor: actor.to_owned(),
        action: action.to_owned(),
        outcome: outcome.to_owned(),
        detail: detail.to_owned(),
    };
    if let Err(err) = store::audit(&app.db, &entry).await {
        tracing::warn!(error = %err, "setup: audit entry not written");
    }
    tracing::info!(
        setup.id = setup_id,
        setup.action = action,
        setup.outcome = outcome,
        "setup audit"
    );
}

/// Opens the sealed secrets of a row.
pub fn open_secrets(secret_box: &SecretBox, row: &SetupRow) -> Result<Secrets, String> {
    let Some(sealed) = &row.sealed_secrets else {
        return Ok(Secrets::default());
    };
    let plain = secret_box
        .open(&row.setup_id, sealed)
        .map_err(|e| e.to_string())?;
    let map: BTreeMap<SecretSlot, String> = serde_json::from_slice(&plain)
        .map_err(|_| "the stored secrets are unreadable".to_owned())?;
    Ok(Secrets(
        map.into_iter()
            .map(|(k, v)| (k, SecretString::from(v)))
            .collect(),
    ))
}

/// Seals secrets for a row's `secrets` column (`None` when there are none).
pub fn seal_secrets(
    secret_box: &SecretBox,
    setup_id: &str,
    secrets: &Secrets,
) -> Result<Option<String>, String> {
    if secrets.0.is_empty() {
        return Ok(None);
    }
    let map: BTreeMap<SecretSlot, &str> = secrets
        .0
        .iter()
        .map(|(k, v)| (*k, v.expose_secret()))
        .collect();
    let plain = serde_json::to_vec(&map).map_err(|e| e.to_string())?;
    secret_box
        .seal(setup_id, &plain)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Answers `setup`, `setup status` and `doctor`.
pub async fn command(app: &App, event: &InboundEvent, command: Command) -> Vec<Reply> {
    let user = match identity::require(app, event, RoleNeed::ServiceNowAdmin).await {
        Ok(user) => user,
        Err(refusal) => return vec![refusal],
    };
    match command {
        Command::Setup => start_or_show(app, event, &user).await,
        Command::SetupStatus => setup_status(app, &user).await,
        Command::Doctor { repair } => doctor(app, &user, repair).await,
        Command::RotateSecret { target } => rotate_secret(app, &user, target).await,
        other => vec![crate::core::not_available(&other)],
    }
}

async fn expire_idle(app: &App) -> bool {
    let minutes =
        i64::try_from(app.settings.setup.idle_timeout_minutes).unwrap_or(i64::MAX / 120_000);
    let cutoff = now_millis().saturating_sub(minutes.saturating_mul(60_000));
    match store::expire_idle(&app.db, cutoff).await {
        Ok(expired) => {
            let any = !expired.is_empty();
            for id in expired {
                audit(
                    app,
                    &id,
                    "m365bot",
                    "expire",
                    "ok",
                    &format!("idle for more than {minutes} minutes; secrets deleted"),
                )
                .await;
            }
            any
        }
        Err(err) => {
            tracing::warn!(error = %err, "setup: expiry failed");
            false
        }
    }
}

/// Clears a `busy` flag left by an interrupted effect (restart mid-step).
async fn recover_stale(app: &App, row: SetupRow) -> SetupRow {
    let limit = i64::try_from(app.settings.setup.busy_timeout_secs)
        .unwrap_or(120)
        .saturating_mul(1000);
    let Some(since) = row.wizard.busy_since else {
        return row;
    };
    if now_millis().saturating_sub(since) < limit {
        return row;
    }
    let mut wizard = row.wizard.clone();
    wizard.busy_since = None;
    wizard.error = Some(StepError {
        field: None,
        message: "The last attempt at this step was interrupted (the bot restarted).".to_owned(),
        fix: Some("Submit the step again: nothing is created twice.".to_owned()),
        details: None,
    });
    match store::compare_and_set(
        &app.db,
        &row.setup_id,
        row.version,
        &wizard,
        row.sealed_secrets.as_deref(),
        &row.status,
    )
    .await
    {
        Ok(Some(version)) => {
            audit(
                app,
                &row.setup_id,
                "m365bot",
                "recover",
                "ok",
                "interrupted step offered again",
            )
            .await;
            SetupRow {
                wizard,
                version,
                ..row
            }
        }
        _ => row,
    }
}

async fn card_for(app: &App, row: &SetupRow, note: Option<&str>) -> Reply {
    let pick = match RecordSlot::of(row.wizard.step) {
        Some(slot) if row.wizard.busy_since.is_none() => effects::pick_list(app, slot).await,
        _ => Vec::new(),
    };
    let can_repair = row.wizard.step != Step::CrossScope || bot_may_repair(app).await;
    view::step_card_with(app, row, &pick, note, can_repair)
}

/// Whether the bot's ServiceNow account holds `admin` (needed to change `sys_db_object`);
/// true when it cannot be told (OAuth client account).
async fn bot_may_repair(app: &App) -> bool {
    let (Some(client), Some(user)) = (
        app.upstreams.servicenow.as_ref(),
        app.settings.servicenow.username.as_ref(),
    ) else {
        return true;
    };
    match identity::find_sys_user(client, std::slice::from_ref(user)).await {
        Ok(Some(record)) => {
            match identity::user_roles(client, record.sys_id().unwrap_or_default()).await {
                Ok(roles) => roles.iter().any(|r| r == "admin"),
                Err(_) => true,
            }
        }
        _ => true,
    }
}

async fn start_or_show(app: &App, event: &InboundEvent, user: &ChatUser) -> Vec<Reply> {
    if let Err(replies) = preconditions(app) {
        return replies;
    }
    let expired = expire_idle(app).await;
    let actor = actor_label(user);
    let existing = match store::active(&app.db).await {
        Ok(row) => row,
        Err(err) => return storage_failure(&err),
    };
    let (row, note) = match existing {
        Some(row) => (
            recover_stale(app, row).await,
            Some("Setup resumes where it was."),
        ),
        None => {
            if let Ok(Some(done)) = store::latest_completed(&app.db).await
                && event.is_personal()
            {
                return vec![view::complete_card(app, &done, None, None)];
            }
            match new_setup(app, event, &actor).await {
                Ok(row) => (
                    row,
                    expired.then_some(
                        "Your previous setup expired (idle too long; its secrets were deleted), so this is a new one.",
                    ),
                ),
                Err(replies) => return replies,
            }
        }
    };
    let card = card_for(app, &row, note).await;
    if event.is_personal() {
        return vec![card];
    }
    // Started in a channel: continue in a 1:1 chat, because secrets are involved.
    match open_personal_chat(app, event, &card).await {
        Ok(()) => notice(
            Tone::Default,
            "Setup continues in our 1:1 chat",
            &format!(
                "{}, I sent you the setup in a private chat with me: secrets are entered only there.",
                user.display_name
                    .clone()
                    .unwrap_or_else(|| user.user_name.clone())
            ),
            None,
        ),
        Err(err) => notice(
            Tone::Attention,
            "I could not open a 1:1 chat with you",
            &err,
            Some("Open a chat with me (Apps > m365bot > Chat) and type **setup** there."),
        ),
    }
}

async fn new_setup(app: &App, event: &InboundEvent, actor: &str) -> Result<SetupRow, Vec<Reply>> {
    let personal = event.is_personal();
    let row = store::new_row(
        actor,
        personal.then(|| event.conversation_id.clone()),
        personal.then(|| event.address.service_url.clone()),
    );
    match store::insert(&app.db, &row).await {
        Ok(true) => {
            audit(
                app,
                &row.setup_id,
                actor,
                "start",
                "ok",
                if personal {
                    "in a 1:1 chat"
                } else {
                    "from a channel"
                },
            )
            .await;
            Ok(row)
        }
        // Another admin started one at the same moment: show that one.
        Ok(false) => match store::active(&app.db).await {
            Ok(Some(row)) => Ok(row),
            Ok(None) => Err(storage_failure(
                &"no active setup after a conflicting insert",
            )),
            Err(err) => Err(storage_failure(&err)),
        },
        Err(err) => Err(storage_failure(&err)),
    }
}

/// Creates the 1:1 conversation with the event's user and posts `card` there.
async fn open_personal_chat(app: &App, event: &InboundEvent, card: &Reply) -> Result<(), String> {
    let address = &event.address;
    let parameters = json!({
        "bot": {"id": address.bot_id, "name": address.bot_name},
        "members": [{"id": event.actor.user_id}],
        "channelData": {"tenant": {"id": address.tenant_id}},
        "isGroup": false,
        "tenantId": address.tenant_id,
    });
    let conversation = app
        .connector
        .create_conversation(&address.service_url, &parameters)
        .await
        .map_err(|e| e.to_string())?;
    let service_url = conversation
        .service_url
        .clone()
        .unwrap_or_else(|| address.service_url.clone());
    send_card(app, &service_url, &conversation.id, &address.bot_id, card).await
}

async fn send_card(
    app: &App,
    service_url: &str,
    conversation_id: &str,
    bot_id: &str,
    card: &Reply,
) -> Result<(), String> {
    let content = crate::teams::render(app, card)
        .ok_or_else(|| "the card could not be rendered".to_owned())?;
    let activity = json!({
        "type": "message",
        "from": {"id": bot_id},
        "conversation": {"id": conversation_id},
        "attachments": [{"contentType": crate::teams::ADAPTIVE_CARD, "content": content}],
    });
    app.connector
        .send(service_url, conversation_id, &activity)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Answers a `setup.*` card action.
pub async fn action(app: &App, event: &InboundEvent, verb: &str, data: &Value) -> Vec<Reply> {
    let user = match identity::require(app, event, RoleNeed::ServiceNowAdmin).await {
        Ok(user) => user,
        Err(refusal) => return vec![refusal],
    };
    if !event.is_personal() {
        return notice(
            Tone::Warning,
            "Setup runs in our 1:1 chat",
            "Setup cards are answered only in a private chat with me, because they carry secrets. Nothing was read from this card.",
            Some("Type **setup** in our 1:1 chat."),
        );
    }
    let secret_box = match preconditions(app) {
        Ok(secret_box) => secret_box,
        Err(replies) => return replies,
    };
    let actor = actor_label(&user);
    let setup_id = data
        .get("setup_id")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let version = data.get("version").and_then(Value::as_i64).unwrap_or(-1);
    let _ = expire_idle(app).await;
    let row = match store::get(&app.db, setup_id).await {
        Ok(Some(row)) => row,
        Ok(None) => return vec![crate::core::out_of_date_card()],
        Err(err) => return storage_failure(&err),
    };
    match row.status.as_str() {
        status::EXPIRED => {
            return notice(
                Tone::Warning,
                "This setup expired",
                &format!(
                    "It was idle for more than {} minutes; its secrets were deleted.",
                    app.settings.setup.idle_timeout_minutes
                ),
                Some("Type **setup** to start again."),
            );
        }
        status::CANCELLED if verb == "setup.delete_created" => {
            return delete_created(app, row, &actor).await;
        }
        status::CANCELLED => return vec![view::step_card(app, &row, &[], None)],
        _ => {}
    }
    let completed = row.status == status::COMPLETED;
    match verb {
        "setup.new" if completed => {
            return match new_setup(app, event, &actor).await {
                Ok(row) => vec![card_for(app, &row, None).await],
                Err(replies) => replies,
            };
        }
        "setup.show" if completed => {
            return vec![view::complete_card(app, &row, None, None)];
        }
        "setup.run_tests" if completed => return run_tests(app, &secret_box, row, &actor).await,
        "setup.reveal" | "setup.handover" | "setup.handover_revoke"
            if completed && row.started_by != actor =>
        {
            audit(
                app,
                &row.setup_id,
                &actor,
                verb,
                "refused",
                "not the admin who ran setup",
            )
            .await;
            return notice(
                Tone::Warning,
                "Only the admin who ran setup can do that",
                &format!(
                    "The secrets of this setup are revealed, handed over and revoked only by {}, who ran it.",
                    row.started_by
                ),
                Some("Ask them, or start a new setup with **Start a new setup**."),
            );
        }
        "setup.reveal" if completed => {
            let binding = setup_admin_binding(app, event, &user).await;
            return reveal_link(app, row, &actor, &binding).await;
        }
        "setup.handover" if completed => {
            return handover(app, row, &actor, data).await;
        }
        "setup.handover_revoke" if completed => {
            return revoke_handover(app, row, &actor).await;
        }
        "setup.repository" if completed => {
            return save_repository_id(app, row, &actor, data).await;
        }
        _ if completed => {
            return vec![view::complete_card(app, &row, None, None)];
        }
        "setup.refresh" => {
            let row = recover_stale(app, row).await;
            return vec![card_for(app, &row, None).await];
        }
        _ => {}
    }
    if row.version != version {
        audit(
            app,
            &row.setup_id,
            &actor,
            verb,
            "ignored",
            "stale card version",
        )
        .await;
        return vec![card_for(app, &row, Some(ALREADY_ANSWERED)).await];
    }
    let input = match parse_input(verb, data, row.wizard.data.auth_type) {
        Ok(input) => input,
        Err(error) => {
            // Validation failed before anything was called: the same card, the error beside
            // the field, nothing stored.
            let mut shown = row.clone();
            shown.wizard.error = Some(error);
            shown.wizard.data.notes.clear();
            return vec![keep_entered(card_for(app, &shown, None).await, data)];
        }
    };
    let submitted_step = row.wizard.step.title();
    let replies = submit(app, &secret_box, row, input, (event, &user), verb).await;
    keep_entered_after_failure(replies, submitted_step, data)
}

/// After a live check refused the step, the same card comes back with everything the admin
/// entered (the choice included), so pressing Continue again retries what was submitted.
fn keep_entered_after_failure(replies: Vec<Reply>, step: &str, submitted: &Value) -> Vec<Reply> {
    replies
        .into_iter()
        .map(|reply| {
            let failed_step = matches!(&reply, Reply::Card { template: "setup_step", data }
                if data["tone"] == "attention" && data["title"] == step);
            if failed_step {
                keep_entered(reply, submitted)
            } else {
                reply
            }
        })
        .collect()
}

/// Puts the submitted non-secret values back into the card's inputs (never a password).
fn keep_entered(card: Reply, submitted: &Value) -> Reply {
    let Reply::Card { template, mut data } = card;
    if let Some(inputs) = data.get_mut("inputs").and_then(Value::as_array_mut) {
        for input in inputs {
            if input["password"].as_bool() == Some(true) {
                continue;
            }
            let id = input["id"].as_str().unwrap_or_default().to_owned();
            if let Some(value) = submitted.get(&id).and_then(Value::as_str) {
                input["value"] = json!(value);
            }
        }
    }
    Reply::Card { template, data }
}

async fn submit(
    app: &App,
    secret_box: &SecretBox,
    row: SetupRow,
    input: Input,
    (event, user): (&InboundEvent, &ChatUser),
    verb: &str,
) -> Vec<Reply> {
    let actor = &actor_label(user);
    let step = row.wizard.step;
    let started = match transition(&row.wizard, input, now_millis()) {
        Ok(next) => next,
        Err(Rejection::Busy) => return vec![card_for(app, &row, None).await],
        Err(Rejection::WrongStep | Rejection::Finished) => {
            return vec![card_for(app, &row, Some(ALREADY_ANSWERED)).await];
        }
    };
    let new_status = if started.wizard.step == Step::Cancelled {
        status::CANCELLED
    } else {
        status::ACTIVE
    };
    let sealed = if new_status == status::CANCELLED {
        None
    } else {
        row.sealed_secrets.clone()
    };
    let version = match store::compare_and_set(
        &app.db,
        &row.setup_id,
        row.version,
        &started.wizard,
        sealed.as_deref(),
        new_status,
    )
    .await
    {
        Ok(Some(version)) => version,
        Ok(None) => {
            // Someone else wrote first: exactly one transition happens.
            audit(
                app,
                &row.setup_id,
                actor,
                verb,
                "ignored",
                "another submit won",
            )
            .await;
            return match store::get(&app.db, &row.setup_id).await {
                Ok(Some(current)) => vec![card_for(app, &current, Some(ALREADY_ANSWERED)).await],
                Ok(None) => vec![crate::core::out_of_date_card()],
                Err(err) => storage_failure(&err),
            };
        }
        Err(err) => return storage_failure(&err),
    };
    let mut row = SetupRow {
        wizard: started.wizard.clone(),
        version,
        sealed_secrets: sealed,
        status: new_status.to_owned(),
        ..row
    };
    let Some(effect) = started.effects.first() else {
        let mut detail = format!("now at {:?}", row.wizard.step);
        if row.wizard.step == Step::Cancelled {
            let made: Vec<String> = effects::made_by(&row.wizard.data)
                .iter()
                .map(effects::Made::describe)
                .collect();
            detail.push_str(&format!(
                "; created by this setup and still existing: {}",
                if made.is_empty() {
                    "nothing".to_owned()
                } else {
                    made.join(", ")
                }
            ));
        }
        audit(
            app,
            &row.setup_id,
            actor,
            &format!("{verb} at {step:?}"),
            "ok",
            &detail,
        )
        .await;
        return vec![card_for(app, &row, None).await];
    };
    let mut secrets = match open_secrets(secret_box, &row) {
        Ok(secrets) => secrets,
        Err(err) => {
            return notice(
                Tone::Attention,
                "Stored secrets unreadable",
                &err,
                Some(
                    "Cancel this setup and start again (or restore the previous setup.encryption_key).",
                ),
            );
        }
    };
    let result = effects::run(app, step, &row.wizard.data, &secrets, effect).await;
    let outcome = if result.error.is_some() {
        "failed"
    } else {
        "ok"
    };
    let detail = match &result.error {
        Some(error) => error.message.clone(),
        None => result.notes.join("; "),
    };
    let Ok(finished) = transition(&row.wizard, Input::Done(Box::new(result)), now_millis()) else {
        return vec![card_for(app, &row, Some(ALREADY_ANSWERED)).await];
    };
    for (slot, secret) in finished.secrets {
        secrets.0.insert(slot, secret);
    }
    let wizard = finished.wizard;
    let reached_end = wizard.step == Step::Complete;
    let sealed = match seal_secrets(secret_box, &row.setup_id, &secrets) {
        Ok(sealed) => sealed,
        Err(err) => return storage_failure(&err),
    };
    let final_status = if reached_end {
        status::COMPLETED
    } else {
        status::ACTIVE
    };
    match store::compare_and_set(
        &app.db,
        &row.setup_id,
        row.version,
        &wizard,
        sealed.as_deref(),
        final_status,
    )
    .await
    {
        Ok(Some(version)) => {
            row = SetupRow {
                wizard,
                version,
                sealed_secrets: sealed,
                status: final_status.to_owned(),
                ..row
            };
        }
        Ok(None) => return vec![card_for(app, &row, Some(ALREADY_ANSWERED)).await],
        Err(err) => return storage_failure(&err),
    }
    audit(
        app,
        &row.setup_id,
        actor,
        &format!("{verb} at {step:?}"),
        outcome,
        &detail,
    )
    .await;
    if reached_end {
        audit(
            app,
            &row.setup_id,
            actor,
            "complete",
            "ok",
            "integration stored; secrets kept encrypted, offered through a Reveal link",
        )
        .await;
        crate::integration::runtime::reload(app).await;
        let binding = setup_admin_binding(app, event, user).await;
        return reveal_link(app, row, actor, &binding).await;
    }
    vec![card_for(app, &row, None).await]
}

fn text<'a>(data: &'a Value, key: &str) -> &'a str {
    data.get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .unwrap_or_default()
}

fn is_domain(value: &str) -> bool {
    let labels: Vec<&str> = value.split('.').collect();
    value.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn is_user_name(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 80
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c))
}

/// Turns a card submit into an input, validating every field first.
pub fn parse_input(verb: &str, data: &Value, auth: Option<AuthType>) -> Result<Input, StepError> {
    let mode = text(data, "mode");
    let existing = mode == "existing";
    if matches!(verb, "setup.app" | "setup.record" | "setup.user")
        && !matches!(mode, "create" | "existing")
    {
        // Never guess the choice: an effect runs only for the mode the admin submitted.
        return Err(StepError::field(
            "mode",
            "Choose Create it for me or Use an existing one.",
        ));
    }
    match verb {
        "setup.agree" => Ok(Input::Agree),
        "setup.back" => Ok(Input::Back),
        "setup.cancel" => Ok(Input::Cancel),
        "setup.environment" => {
            let basic = match text(data, "auth") {
                "basic" => true,
                "aad" | "" => false,
                _ => return Err(StepError::field("auth", "Choose AAD Auth or Basic Auth.")),
            };
            Ok(Input::Environment {
                test_environment: text(data, "test_environment") == "true",
                basic,
            })
        }
        "setup.tenant" => {
            let domain = text(data, "domain").to_ascii_lowercase();
            if domain.is_empty() {
                return Err(StepError::field("domain", "Enter the tenant domain."));
            }
            if !is_domain(&domain) && !crate::ids::is_guid(&domain) {
                return Err(StepError::field(
                    "domain",
                    "That is not a domain: enter something like contoso.onmicrosoft.com.",
                ));
            }
            Ok(Input::Tenant(domain))
        }
        "setup.app" => {
            if !existing {
                let entered = ["client_id", "client_secret"]
                    .into_iter()
                    .any(|field| !text(data, field).is_empty());
                if entered {
                    return Err(StepError::field(
                        "mode",
                        "You chose Create it for me but also entered a client ID or secret: choose Use an existing app registration to use that app, or clear both fields.",
                    ));
                }
                return Ok(Input::App(AppChoice::Create));
            }
            let client_id = text(data, "client_id").to_ascii_lowercase();
            if !crate::ids::is_guid(&client_id) {
                return Err(StepError::field(
                    "client_id",
                    "Enter the Application (client) ID, a GUID like 00000000-0000-0000-0000-000000000000.",
                ));
            }
            let secret = data
                .get("client_secret")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if secret.trim().is_empty() || secret.len() > 512 {
                return Err(StepError::field(
                    "client_secret",
                    "Enter the client secret's value (it is stored encrypted and never shown here).",
                ));
            }
            Ok(Input::App(AppChoice::Existing {
                client_id,
                secret: SecretString::from(secret.trim().to_owned()),
            }))
        }
        "setup.record" => {
            if !existing {
                return Ok(Input::Record(RecordChoice::Create));
            }
            let sys_id = text(data, "record");
            if sys_id.len() != 32 || !sys_id.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(StepError::field(
                    "record",
                    "Pick a record from the list (or choose Create it for me).",
                ));
            }
            Ok(Input::Record(RecordChoice::Existing(sys_id.to_owned())))
        }
        "setup.user" => {
            let basic = auth == Some(AuthType::Basic);
            let user_name = text(data, "user_name");
            if (basic || existing) && !is_user_name(user_name) {
                return Err(StepError::field(
                    "user_name",
                    "Enter a User ID (letters, digits, . _ @ -, at most 80 characters).",
                ));
            }
            if !existing {
                return Ok(Input::User(UserChoice::Create {
                    user_name: basic.then(|| user_name.to_owned()),
                }));
            }
            let password = data
                .get("password")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if basic && password.is_empty() {
                return Err(StepError::field(
                    "password",
                    "Enter the user's password (stored encrypted, never shown here).",
                ));
            }
            Ok(Input::User(UserChoice::Existing {
                user_name: user_name.to_owned(),
                password: basic.then(|| SecretString::from(password.to_owned())),
            }))
        }
        "setup.cross_scope" => Ok(Input::CrossScope {
            repair: data.get("repair").and_then(Value::as_bool).unwrap_or(false),
        }),
        _ => Err(StepError {
            field: None,
            message: "This button is not part of the current step.".to_owned(),
            fix: None,
            details: None,
        }),
    }
}

async fn run_tests(app: &App, secret_box: &SecretBox, row: SetupRow, actor: &str) -> Vec<Reply> {
    let secrets = match open_secrets(secret_box, &row) {
        Ok(secrets) => secrets,
        Err(err) => {
            return notice(
                Tone::Attention,
                "Stored secrets unreadable",
                &err,
                Some("Run setup again."),
            );
        }
    };
    let outcomes = effects::run_tests(app, &row.wizard.data, &secrets, false).await;
    let failed = outcomes
        .iter()
        .filter(|o| o.status == crate::integration::doctor::Status::Fail)
        .count();
    let mut wizard = row.wizard.clone();
    for (id, verdict) in effects::verdicts(&outcomes) {
        wizard.data.verified.insert(id, verdict);
    }
    let shown = save_wizard(app, row, wizard).await;
    audit(
        app,
        &shown.setup_id,
        actor,
        "run tests",
        if failed == 0 { "ok" } else { "failed" },
        &format!("{} checks, {failed} failed", outcomes.len()),
    )
    .await;
    vec![view::results_card(
        "Run tests",
        &outcomes,
        view::results_actions(&shown),
    )]
}

/// Stores the Repository ID the admin entered on the completion card.
async fn save_repository_id(app: &App, row: SetupRow, actor: &str, data: &Value) -> Vec<Reply> {
    let entered = text(data, "repository_id");
    let valid = (1..=100).contains(&entered.len())
        && entered
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return vec![view::complete_card_with(
            app,
            &row,
            None,
            None,
            Some("Enter the instance name: letters, digits, - or _ (for example dev12345)."),
        )];
    }
    let mut wizard = row.wizard.clone();
    wizard.data.repository_id = Some(entered.to_owned());
    let detail = format!("Repository ID set to {entered}");
    save_completed(app, row, wizard, actor, "repository id", &detail).await
}

/// Stores a change to a completed setup, audits it and shows the completion card (no secrets).
async fn save_completed(
    app: &App,
    row: SetupRow,
    wizard: Wizard,
    actor: &str,
    action: &str,
    detail: &str,
) -> Vec<Reply> {
    let shown = save_wizard(app, row, wizard).await;
    audit(app, &shown.setup_id, actor, action, "ok", detail).await;
    vec![view::complete_card(app, &shown, None, None)]
}

async fn handover(app: &App, row: SetupRow, actor: &str, data: &Value) -> Vec<Reply> {
    let entered = text(data, "handover_email");
    let replies = handover_to(app, row, actor, entered).await;
    // A refused hand-over keeps the address the admin typed.
    replies
        .into_iter()
        .map(|reply| match reply {
            Reply::Card {
                template: "setup_complete",
                mut data,
            } if data["handover_error"].is_string() => {
                data["handover_email"] = json!(entered);
                Reply::Card {
                    template: "setup_complete",
                    data,
                }
            }
            other => other,
        })
        .collect()
}

/// Who the Reveal link of the admin who ran setup is bound to: their Entra object id (from
/// Teams, else their linked account), else their e-mail/UPN.
async fn setup_admin_binding(app: &App, event: &InboundEvent, user: &ChatUser) -> Binding {
    let mut oid = event
        .actor
        .aad_object_id
        .clone()
        .or_else(|| user.platform.aad_object_id.clone())
        .filter(|id| !id.trim().is_empty());
    if oid.is_none() {
        let platform = match event.platform {
            crate::core::Platform::Teams => "teams",
            crate::core::Platform::Slack => "slack",
        };
        oid = crate::link::store::LinkStore::new(&app.db)
            .link(platform, &event.actor.user_id)
            .await
            .ok()
            .flatten()
            .map(|link| link.m365_object_id);
    }
    let login = user
        .platform
        .addresses()
        .into_iter()
        .next()
        .or_else(|| user.email.clone())
        .filter(|address| address.contains('@'));
    Binding {
        oid,
        login,
        label: actor_label(user),
    }
}

/// Issues a Reveal link for the admin who ran setup and shows the completion card with it.
async fn reveal_link(app: &App, row: SetupRow, actor: &str, binding: &Binding) -> Vec<Reply> {
    if binding.oid.is_none() && binding.login.is_none() {
        audit(
            app,
            &row.setup_id,
            actor,
            "reveal link",
            "refused",
            "no Entra object id or e-mail known",
        )
        .await;
        return vec![view::complete_card_with(
            app,
            &row,
            None,
            Some(
                "I cannot tell which Microsoft 365 account is yours (Teams sent no object id and your ServiceNow user has no e-mail), so I cannot issue a Reveal link. Type **link-account** first, then press New Reveal link.",
            ),
            None,
        )];
    }
    match reveal::issue(
        &app.db,
        &row.setup_id,
        reveal::purpose::SETUP_ADMIN,
        binding,
    )
    .await
    {
        Ok(token) => {
            let how = if binding.oid.is_some() {
                "Entra object id"
            } else {
                "e-mail/UPN"
            };
            audit(
                app,
                &row.setup_id,
                actor,
                "reveal link",
                "ok",
                &format!("issued for {} (bound by {how})", binding.label),
            )
            .await;
            vec![view::complete_card(
                app,
                &row,
                Some(&reveal::url(app, &token)),
                None,
            )]
        }
        Err(err) => storage_failure(&err),
    }
}

async fn revoke_handover(app: &App, row: SetupRow, actor: &str) -> Vec<Reply> {
    let Some(recipient) = row.wizard.data.handed_over_to.clone() else {
        return vec![view::complete_card(app, &row, None, None)];
    };
    let revoked = match reveal::revoke_handover(&app.db, &row.setup_id).await {
        Ok(count) => count,
        Err(err) => return storage_failure(&err),
    };
    let mut wizard = row.wizard.clone();
    wizard.data.handed_over_to = None;
    let detail = format!(
        "hand-over to {recipient} revoked ({})",
        if revoked > 0 {
            "its link was unused and no longer works"
        } else {
            "its link was already used or expired"
        }
    );
    save_completed(app, row, wizard, actor, "revoke hand-over", &detail).await
}

async fn handover_to(app: &App, row: SetupRow, actor: &str, entered: &str) -> Vec<Reply> {
    if let Some(to) = &row.wizard.data.handed_over_to {
        audit(
            app,
            &row.setup_id,
            actor,
            "hand over",
            "refused",
            &format!("already handed over to {to}"),
        )
        .await;
        return vec![view::complete_card(
            app,
            &row,
            None,
            Some(&format!(
                "This setup was already handed over to {to}: a hand-over works once. Press Revoke hand-over first to hand it over again."
            )),
        )];
    }
    let email = entered.to_ascii_lowercase();
    let at = email.find('@');
    if at.is_none_or(|i| i == 0 || !is_domain(&email[i + 1..])) {
        return vec![view::complete_card(
            app,
            &row,
            None,
            Some("Enter the Microsoft 365 admin's e-mail address."),
        )];
    }
    let conversations = match store::personal_conversations(&app.db).await {
        Ok(list) => list,
        Err(err) => return storage_failure(&err),
    };
    let mut target = None;
    for (conversation_id, service_url, user_id, bot_id) in conversations {
        if let Ok(member) = app
            .connector
            .get_member(&service_url, &conversation_id, &user_id)
            .await
        {
            let matches = [
                member.email.as_deref(),
                member.user_principal_name.as_deref(),
            ]
            .into_iter()
            .flatten()
            .any(|a| a.eq_ignore_ascii_case(&email));
            if matches {
                target = Some((conversation_id, service_url, bot_id, member));
                break;
            }
        }
    }
    let Some((conversation_id, service_url, bot_id, member)) = target else {
        audit(
            app,
            &row.setup_id,
            actor,
            "hand over",
            "failed",
            &format!("{email} has no chat with the bot"),
        )
        .await;
        return vec![view::complete_card(
            app,
            &row,
            None,
            Some(&format!(
                "I have no chat with {email} yet. Ask them to open a chat with me (Apps > m365bot), then hand over again."
            )),
        )];
    };
    let recipient = member
        .name
        .clone()
        .map_or_else(|| email.clone(), |n| format!("{n} ({email})"));
    let binding = Binding {
        oid: member
            .aad_object_id
            .clone()
            .filter(|id| !id.trim().is_empty()),
        login: Some(email.clone()),
        label: recipient.clone(),
    };
    let token =
        match reveal::issue(&app.db, &row.setup_id, reveal::purpose::HANDOVER, &binding).await {
            Ok(token) => token,
            Err(err) => return storage_failure(&err),
        };
    let card = view::handover_card(app, &row, &reveal::url(app, &token), &row.started_by);
    if let Err(err) = send_card(app, &service_url, &conversation_id, &bot_id, &card).await {
        // The link was never delivered: it must not stay usable.
        if let Err(revoke) = reveal::revoke_handover(&app.db, &row.setup_id).await {
            tracing::warn!(error = %revoke, "setup: undelivered hand-over link not revoked");
        }
        audit(app, &row.setup_id, actor, "hand over", "failed", &err).await;
        return vec![view::complete_card(
            app,
            &row,
            None,
            Some(&format!("Sending to {email} failed: {err}")),
        )];
    }
    let mut wizard = row.wizard.clone();
    wizard.data.handed_over_to = Some(recipient);
    let detail = format!(
        "Reveal link (hand-over) sent to {email}; the recipient must sign in and hold a Microsoft 365 admin role"
    );
    save_completed(app, row, wizard, actor, "hand over", &detail).await
}

/// Deletes what a cancelled setup created (and only that), audits each result and shows what
/// remains.
async fn delete_created(app: &App, row: SetupRow, actor: &str) -> Vec<Reply> {
    let results = effects::delete_made(app, &row.wizard.data).await;
    let mut wizard = row.wizard.clone();
    let mut lines = Vec::new();
    for (made, outcome) in &results {
        let (outcome_word, line) = match outcome {
            effects::Removal::Deleted => ("ok", format!("deleted {}", made.describe())),
            effects::Removal::AlreadyGone => {
                ("ok", format!("{} was already gone", made.describe()))
            }
            effects::Removal::Kept(why) => (
                "failed",
                format!("not deleted: {} ({why})", made.describe()),
            ),
        };
        if !matches!(outcome, effects::Removal::Kept(_)) {
            wizard.data.removed.push(made.key().to_owned());
        }
        audit(
            app,
            &row.setup_id,
            actor,
            "delete created",
            outcome_word,
            &line,
        )
        .await;
        lines.push(line);
    }
    wizard.data.notes = lines;
    let shown = save_wizard(app, row, wizard).await;
    vec![view::step_card(app, &shown, &[], None)]
}

async fn setup_status(app: &App, user: &ChatUser) -> Vec<Reply> {
    let _ = expire_idle(app).await;
    let in_progress = match store::active(&app.db).await {
        Ok(row) => row,
        Err(err) => return storage_failure(&err),
    };
    let live = store::latest_completed(&app.db).await.ok().flatten();
    if in_progress.is_none() && live.is_none() {
        return notice(
            Tone::Default,
            "No setup yet",
            "Nobody has run setup on this bot yet.",
            Some("Type **setup** to start."),
        );
    }
    // The live integration's checks run again now (drift); a setup in progress shows its own
    // verdicts only when nothing is live yet.
    let verified_row = live.as_ref().or(in_progress.as_ref());
    let drift = match verified_row {
        Some(row) => drift_of(app, row).await,
        None => Vec::new(),
    };
    let mut log = Vec::new();
    for row in [&live, &in_progress].into_iter().flatten() {
        log.extend(
            store::audit_log(&app.db, &row.setup_id, view::AUDIT_SHOWN)
                .await
                .unwrap_or_default(),
        );
    }
    log.sort_by_key(|entry| entry.at);
    let keep = log.len().saturating_sub(view::AUDIT_SHOWN as usize);
    log.drain(..keep);
    let actor = actor_label(user);
    for row in [&live, &in_progress].into_iter().flatten() {
        audit(app, &row.setup_id, &actor, "status", "ok", "").await;
    }
    let reveals = match &live {
        Some(row) => reveal::links_of(&app.db, &row.setup_id)
            .await
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let mut card = view::status_card(live.as_ref(), in_progress.as_ref(), &drift, &log, &reveals);
    if live.is_some()
        && let Some(watched) = crate::integration::watch::summary(&app.db).await
    {
        let Reply::Card { data, .. } = &mut card;
        if let Some(facts) = data["facts"].as_array_mut() {
            facts.push(json!({"title": "Watched", "value": watched}));
        }
    }
    vec![card]
}

/// Each verified check of `row` run again now: (id, title, detail now, drifted).
async fn drift_of(app: &App, row: &SetupRow) -> Vec<view::CheckNow> {
    let Ok(secret_box) = preconditions(app) else {
        return Vec::new();
    };
    if row.wizard.data.verified.is_empty() {
        return Vec::new();
    }
    let secrets = open_secrets(&secret_box, row).unwrap_or_default();
    let Some(spec) = effects::spec(app, &row.wizard.data, &secrets) else {
        return Vec::new();
    };
    let ids: Vec<&str> = row
        .wizard
        .data
        .verified
        .keys()
        .map(String::as_str)
        .collect();
    crate::integration::doctor::run_only(
        &effects::upstreams_for(app, &spec.tenant),
        &spec,
        &ids,
        false,
    )
    .await
    .into_iter()
    .map(|o| {
        let now = effects::verdicts(std::slice::from_ref(&o));
        let status_now = now
            .first()
            .map(|(_, v)| v.status.clone())
            .unwrap_or_default();
        let before = row
            .wizard
            .data
            .verified
            .get(o.id)
            .map(|v| v.status.clone())
            .unwrap_or_default();
        view::CheckNow {
            id: o.id.to_owned(),
            title: o.title.clone(),
            detail: o.detail.clone(),
            drifted: status_now != before,
        }
    })
    .collect()
}

/// The integration doctor verifies: the latest completed setup, else `[integration]`.
pub async fn stored_integration(
    app: &App,
) -> Result<Option<crate::integration::IntegrationSpec>, String> {
    if let Some(row) = store::latest_completed(&app.db)
        .await
        .map_err(|e| e.to_string())?
    {
        let secret_box = SecretBox::new(app.settings.setup.encryption_key.as_ref())
            .map_err(|e| e.to_string())?;
        let secrets = open_secrets(&secret_box, &row)?;
        return Ok(effects::spec(app, &row.wizard.data, &secrets));
    }
    Ok(app.settings.integration.clone())
}

async fn doctor(app: &App, user: &ChatUser, repair: bool) -> Vec<Reply> {
    let spec = match stored_integration(app).await {
        Ok(Some(spec)) => spec,
        Ok(None) => {
            return notice(
                Tone::Warning,
                "Nothing to check yet",
                "No setup has been completed and no [integration] is configured.",
                Some("Type **setup** to set the integration up."),
            );
        }
        Err(err) => {
            return notice(
                Tone::Attention,
                "The stored integration cannot be read",
                &err,
                Some("Check setup.encryption_key, or run setup again."),
            );
        }
    };
    let upstreams = effects::upstreams_for(app, &spec.tenant);
    let mut outcomes = crate::integration::doctor::run(&upstreams, &spec, repair).await;
    outcomes.extend(app.platform_checks().await);
    let failed = outcomes
        .iter()
        .filter(|o| o.status == crate::integration::doctor::Status::Fail)
        .count();
    tracing::info!(actor = %user.user_name, repair, failed, "doctor ran from chat");
    let title = if repair {
        "Doctor (with repair)"
    } else {
        "Doctor"
    };
    vec![view::results_card(title, &outcomes, Vec::new())]
}

async fn rotate_secret(
    app: &App,
    user: &ChatUser,
    target: crate::integration::rotate::SecretTarget,
) -> Vec<Reply> {
    let tenant = match store::latest_completed(&app.db).await {
        Ok(Some(row)) => row.wizard.data.tenant.clone().unwrap_or_default(),
        Ok(None) => String::new(),
        Err(err) => return storage_failure(&err),
    };
    let upstreams = effects::upstreams_for(app, &tenant);
    let report = super::rotate::rotate_secret(
        &app.db,
        &app.settings,
        &upstreams,
        target,
        &actor_label(user),
    )
    .await;
    if report.rotated {
        // The runtime identity uses the new secret from now on (other replicas and the
        // command line follow within one watch tick).
        crate::integration::runtime::reload(app).await;
    }
    vec![view::rotation_card(target, &report)]
}

/// Stores `wizard` on `row` if nobody changed the row meanwhile (same version) and returns the
/// row as it now is; when the write loses the race, the row as it was.
async fn save_wizard(app: &App, row: SetupRow, wizard: Wizard) -> SetupRow {
    match store::compare_and_set(
        &app.db,
        &row.setup_id,
        row.version,
        &wizard,
        row.sealed_secrets.as_deref(),
        &row.status,
    )
    .await
    {
        Ok(Some(version)) => SetupRow {
            wizard,
            version,
            ..row
        },
        _ => row,
    }
}
