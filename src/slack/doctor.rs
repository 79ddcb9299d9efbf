//! The doctor's Slack checks (when Slack is enabled): the bot token works (`auth.test`), it
//! has every scope the manifest asks for (Slack lists the token's scopes in the
//! `x-oauth-scopes` header), and the bot is a member of every channel with a Slack
//! subscription (`conversations.info` `is_member`). Each failure says what to do.

use super::api::SlackClient;
use super::manifest::BOT_SCOPES;
use crate::app::App;
use crate::integration::doctor::CheckOutcome;
use crate::notify::slack::PLATFORM;

/// Id of the token check.
pub const TOKEN: &str = "slack.token";
/// Id of the scopes check.
pub const SCOPES: &str = "slack.scopes";
/// Id of the channel membership check.
pub const CHANNELS: &str = "slack.channels";

/// The Slack checks, or none when Slack is off.
pub async fn run(app: &App) -> Vec<CheckOutcome> {
    let Some(slack) = app.slack.as_ref() else {
        return Vec::new();
    };
    let rows: Result<Vec<(Option<String>, String)>, sqlx::Error> = sqlx::query_as(
        "SELECT DISTINCT team_id, channel_id FROM notify_subscriptions \
         WHERE platform = $1 AND enabled = 1 AND channel_id IS NOT NULL ORDER BY team_id, channel_id",
    )
    .bind(PLATFORM)
    .fetch_all(&app.db.pool)
    .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(err) => {
            return vec![CheckOutcome::fail(
                CHANNELS,
                "The bot is in every subscribed Slack channel",
                format!("the subscriptions cannot be read: {err}"),
                "Check the bot's database, then run doctor again.",
            )];
        }
    };
    let mut outcomes = check(&slack.api, &[]).await;
    if outcomes
        .iter()
        .any(|o| o.id == TOKEN && o.status != crate::integration::doctor::Status::Pass)
    {
        return outcomes;
    }
    // Each workspace's channels with that workspace's token.
    let mut problems = Vec::new();
    let mut teams: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (team, channel) in rows {
        teams
            .entry(team.unwrap_or_default())
            .or_default()
            .push(channel);
    }
    let mut count = 0;
    for (team, channels) in &teams {
        count += channels.len();
        match slack.api_for(&app.db, team).await {
            Ok(api) => problems.extend(membership_problems(&api, channels).await),
            Err(err) => problems.push(format!("workspace {team}: {err}")),
        }
    }
    outcomes.retain(|o| o.id != CHANNELS);
    outcomes.push(channels_outcome(count, problems));
    outcomes
}

/// The checks against the Web API of `api` for the subscribed `channels`.
pub async fn check(api: &SlackClient, channels: &[String]) -> Vec<CheckOutcome> {
    let mut outcomes = Vec::new();
    let (identity, scopes) = match api.auth_test_scopes().await {
        Ok(answer) => answer,
        Err(err) => {
            outcomes.push(CheckOutcome::fail(
                TOKEN,
                "The Slack bot token works (auth.test)",
                err.to_string(),
                "Set slack.bot_token to the app's Bot User OAuth Token (xoxb-…), or reinstall the app in the workspace.",
            ));
            return outcomes;
        }
    };
    outcomes.push(CheckOutcome::pass(
        TOKEN,
        "The Slack bot token works (auth.test)",
        format!(
            "bot {} in workspace {} ({})",
            identity.user_id,
            identity.team.as_deref().unwrap_or("?"),
            identity.team_id
        ),
    ));
    let title = "The Slack app has every scope the manifest asks for";
    outcomes.push(match scopes {
        None => CheckOutcome::fail(
            SCOPES,
            title,
            "Slack did not list the token's scopes (no x-oauth-scopes header)",
            "Check slack.api_url points at Slack's Web API.",
        ),
        Some(scopes) => {
            let missing: Vec<&str> = BOT_SCOPES
                .iter()
                .copied()
                .filter(|wanted| !scopes.iter().any(|s| s == wanted))
                .collect();
            if missing.is_empty() {
                CheckOutcome::pass(SCOPES, title, format!("{} scopes", scopes.len()))
            } else {
                CheckOutcome::fail(
                    SCOPES,
                    title,
                    format!("missing: {}", missing.join(", ")),
                    "Add the missing bot token scopes (print the manifest with `m365bot manifest --slack`), then reinstall the app in the workspace.",
                )
            }
        }
    });
    outcomes.push(channels_outcome(
        channels.len(),
        membership_problems(api, channels).await,
    ));
    outcomes
}

/// What keeps the bot from posting in each of `channels`.
async fn membership_problems(api: &SlackClient, channels: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    for channel in channels {
        match api.conversation_info(channel).await {
            Ok(info) if info.is_archived => {
                problems.push(format!(
                    "<#{channel}> is archived: unarchive it or type /m365 unsubscribe there"
                ));
            }
            Ok(info) if info.is_im || info.is_member != Some(false) => {}
            Ok(_) => problems.push(format!(
                "the bot is not a member of <#{channel}>: invite it there (/invite @m365bot)"
            )),
            Err(err) => problems.push(format!("<#{channel}>: {err}")),
        }
    }
    problems
}

fn channels_outcome(count: usize, problems: Vec<String>) -> CheckOutcome {
    let title = "The bot is in every subscribed Slack channel";
    if problems.is_empty() {
        CheckOutcome::pass(CHANNELS, title, format!("{count} subscribed channel(s)"))
    } else {
        CheckOutcome::fail(
            CHANNELS,
            title,
            problems.join("; "),
            "Invite the bot to each channel named (/invite @m365bot), or unsubscribe there; then run doctor again.",
        )
    }
}
