//! The chat replies of linking and role enablement. The sign-in and role-list cards have their
//! own templates (`link_signin`, `link_roles`); where a template is not compiled in, the same
//! content goes into a notice card, so every reply renders.

use serde_json::{Value, json};

use crate::core::{Reply, Tone};

/// True when `cards/teams/<name>.json.hbs` is compiled into the binary.
fn has_template(name: &str) -> bool {
    let full = format!("teams/{name}");
    crate::cards::template_names().iter().any(|t| *t == full)
}

fn card(template: &'static str, data: Value, fallback: impl FnOnce() -> Reply) -> Reply {
    if has_template(template) {
        Reply::Card { template, data }
    } else {
        fallback()
    }
}

/// The sign-in card: a button opening `url`, valid for `minutes`.
pub fn sign_in(url: &str, minutes: u64, servicenow_user: &str, replaces: Option<&str>) -> Reply {
    let text = format!(
        "Sign in with your Microsoft 365 admin account to link it to your ServiceNow user **{servicenow_user}**. The link works once, for you only, for {minutes} minutes."
    );
    let note = replaces
        .map(|upn| format!("You are linked to **{upn}** now; a new sign-in replaces that link."));
    let data = json!({
        "title": "Link your Microsoft 365 admin account",
        "text": text,
        "note": note,
        "url": url,
        "button": "Sign in to Microsoft 365",
        "minutes": minutes,
    });
    card("link_signin", data, || {
        let mut body = format!("{text}\n\n[Sign in to Microsoft 365]({url})");
        if let Some(note) = &note {
            body.push_str("\n\n");
            body.push_str(note);
        }
        Reply::notice(
            Tone::Default,
            "Link your Microsoft 365 admin account",
            &body,
            Some("Open the sign-in link, sign in, then come back to this chat."),
        )
    })
}

/// One holder of a role, for the role list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// `sys_user.user_name`.
    pub user_name: String,
    /// `sys_user.name`.
    pub name: Option<String>,
}

/// The role-list card: a headline, then each role with its holders.
pub fn role_list(
    title: &str,
    headline: Option<(Tone, String)>,
    roles: &[(String, Vec<Holder>)],
) -> Reply {
    let sections: Vec<Value> = roles
        .iter()
        .map(|(role, holders)| {
            json!({
                "role": role,
                "holders": holders.iter().map(|h| json!({
                    "user_name": h.user_name,
                    "name": h.name.clone().unwrap_or_else(|| h.user_name.clone()),
                })).collect::<Vec<_>>(),
                "empty": holders.is_empty(),
            })
        })
        .collect();
    let (tone, text) = headline.map_or((Tone::Default, None), |(tone, text)| (tone, Some(text)));
    let data = json!({
        "title": title,
        "tone": tone,
        "text": text,
        "roles": sections,
    });
    card("link_roles", data, || {
        let mut body = text.clone().map(|t| format!("{t}\n\n")).unwrap_or_default();
        for (role, holders) in roles {
            body.push_str(&format!("**{role}**: "));
            if holders.is_empty() {
                body.push_str("nobody");
            } else {
                let names: Vec<String> = holders
                    .iter()
                    .map(|h| match &h.name {
                        Some(name) if name != &h.user_name => format!("{name} ({})", h.user_name),
                        _ => h.user_name.clone(),
                    })
                    .collect();
                body.push_str(&names.join(", "));
            }
            body.push_str("\n\n");
        }
        Reply::notice(tone, title, body.trim_end(), None)
    })
}
