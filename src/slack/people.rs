//! Slack users for the people commands: `<@U…>` mentions in typed text, the rule tying a
//! `link-account` sign-in to the Slack user (Slack has no Entra object id, so the profile
//! e-mail must be the signed-in account's e-mail or UPN), and personal answers in the bot's
//! direct message with the user.

use futures_util::future::BoxFuture;

use super::api::SlackClient;
use super::settings::EmailMatch;
use super::{Slack, TokenError, blocks};
use crate::core::{Mention, Reply, Tone};
use crate::link::platform::LinkPlatform;
use crate::link::store::ChatAddress;
use crate::link::token::IdClaims;

/// The user mentions in Slack text, in order and without repeats: `<@U123>` and
/// `<@U123|name>` (also `W…` ids of Enterprise Grid). Channel links (`<#C…>`), special
/// mentions (`<!here>`) and URLs are not users.
pub fn mentions(text: &str) -> Vec<Mention> {
    let mut found: Vec<Mention> = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("<@") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('>') else {
            break;
        };
        let inner = &after[..end];
        let (user_id, name) = match inner.split_once('|') {
            Some((id, name)) => (id, Some(name.trim().to_owned()).filter(|n| !n.is_empty())),
            None => (inner, None),
        };
        if is_user_id(user_id) && !found.iter().any(|m| m.user_id == user_id) {
            found.push(Mention {
                user_id: user_id.to_owned(),
                name,
                text: format!("<@{inner}>"),
            });
        }
        rest = &after[end + 1..];
    }
    found
}

/// True for a Slack user id (`U…` or `W…`, upper-case letters and digits).
fn is_user_id(id: &str) -> bool {
    (id.starts_with('U') || id.starts_with('W'))
        && id.len() >= 2
        && id.len() <= 32
        && id
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

/// `text` without the mentions of `bot_user_id` (and, when the bot's id is unknown, without a
/// leading mention, which in an `app_mention` is the bot's), trimmed.
pub fn without_bot_mention(text: &str, bot_user_id: Option<&str>) -> String {
    let mut out = text.to_owned();
    match bot_user_id {
        Some(bot) => {
            for mention in mentions(text).into_iter().filter(|m| m.user_id == bot) {
                out = out.replace(&mention.text, " ");
            }
        }
        None => {
            let trimmed = out.trim_start();
            if let Some(first) = mentions(trimmed).into_iter().next()
                && trimmed.starts_with(&first.text)
            {
                out = trimmed[first.text.len()..].to_owned();
            }
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl LinkPlatform for Slack {
    fn check_sign_in<'a>(
        &'a self,
        address: &'a ChatAddress,
        claims: &'a IdClaims,
    ) -> BoxFuture<'a, Result<(), Reply>> {
        Box::pin(check_sign_in(self, address, claims))
    }

    fn deliver<'a>(
        &'a self,
        address: &'a ChatAddress,
        reply: &'a Reply,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(deliver_private(self, address, reply))
    }
}

/// Checks that the account signed in by `link-account` belongs to the Slack user `user_id`:
/// under `slack.email_match`, its e-mail or UPN (`email-or-upn`) or its UPN (`upn-only`) must
/// equal the Slack profile e-mail, read again now (in the workspace of `address`, kept as its
/// `tenant_id`). The refusal says what to do.
async fn check_sign_in(
    slack: &Slack,
    address: &ChatAddress,
    claims: &IdClaims,
) -> Result<(), Reply> {
    let identity = slack
        .user_identity(workspace_of(address), &address.chat_user_id)
        .await?;
    let slack_email = identity.email.unwrap_or_default();
    let rule = slack.email_match;
    if rule.matches(&slack_email, claims.email.as_deref(), claims.upn.as_deref()) {
        return Ok(());
    }
    let signed_in = claims
        .upn
        .clone()
        .unwrap_or_else(|| claims.username.clone());
    let (rule_name, needs) = match rule {
        EmailMatch::EmailOrUpn => (
            "email-or-upn",
            "the e-mail or the user name (UPN) of the account you sign in with",
        ),
        EmailMatch::UpnOnly => (
            "upn-only",
            "the user name (UPN) of the account you sign in with",
        ),
    };
    let email_note = claims
        .email
        .as_deref()
        .filter(|email| !email.eq_ignore_ascii_case(&signed_in))
        .map(|email| format!(" (e-mail {email})"))
        .unwrap_or_default();
    Err(Reply::notice(
        Tone::Attention,
        "That account is not the one of your Slack profile",
        &format!(
            "Your Slack profile e-mail is **{slack_email}**, but you signed in as **{signed_in}**{email_note}. This bot links a Slack user only to the Microsoft 365 account whose address is the same (slack.email_match = {rule_name}: {needs} must equal your Slack e-mail). Nothing was linked."
        ),
        Some(&format!(
            "Type **link-account** again and sign in as **{slack_email}** (use a private browser window if another account is signed in), or ask your Slack admin to correct the e-mail of your Slack profile."
        )),
    ))
}

/// The Slack workspace of a stored address (Slack keeps its team id as the `tenant_id`).
fn workspace_of(address: &ChatAddress) -> Option<&str> {
    Some(address.tenant_id.as_str()).filter(|team| !team.is_empty())
}

impl Slack {
    /// The Web API client of the workspace `team_id` (the configured one when unknown, or
    /// when the bot serves one workspace only).
    pub async fn workspace_api(&self, team_id: Option<&str>) -> Result<SlackClient, TokenError> {
        match (team_id, self.db.as_ref()) {
            (Some(team_id), Some(db)) => self.api_for(db, team_id).await,
            _ => Ok(self.api.clone()),
        }
    }
}

/// Posts `reply` only to the user of `address`: in its conversation when that is a direct
/// message (`D…`), otherwise in the bot's direct message with them (`conversations.open`).
async fn deliver_private(
    slack: &Slack,
    address: &ChatAddress,
    reply: &Reply,
) -> Result<(), String> {
    let api = slack
        .workspace_api(workspace_of(address))
        .await
        .map_err(|err| err.to_string())?;
    let channel = if address.conversation_id.starts_with('D') {
        address.conversation_id.clone()
    } else {
        api.open_direct_message(&address.chat_user_id)
            .await
            .map_err(|err| err.to_string())?
    };
    api.post_message(&channel, &blocks::render(reply), None)
        .await
        .map(drop)
        .map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_mentions_are_found_with_and_without_names() {
        let found =
            mentions("grant <@U0JANE|jane.doe> and <@W12AB> <#C1|general> <!here> <@U0JANE>");
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].user_id, "U0JANE");
        assert_eq!(found[0].name.as_deref(), Some("jane.doe"));
        assert_eq!(found[0].text, "<@U0JANE|jane.doe>");
        assert_eq!(found[1].user_id, "W12AB");
        assert_eq!(found[1].name, None);
        assert!(mentions("<@lower> <@U1 x> <@").is_empty());
    }

    #[test]
    fn the_bot_mention_is_stripped() {
        assert_eq!(
            without_bot_mention("<@U0BOT> grant <@U0JANE> insights_user", Some("U0BOT")),
            "grant <@U0JANE> insights_user"
        );
        assert_eq!(
            without_bot_mention("  <@U0BOT|m365bot>   help ", None),
            "help"
        );
        assert_eq!(
            without_bot_mention("help <@U0JANE>", None),
            "help <@U0JANE>"
        );
    }
}
