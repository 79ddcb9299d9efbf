//! What the notification outbox knows of Slack: the platform value and address of a Slack
//! subscription (`slack:<team>:<channel>`), the Slack errors that stop deliveries, disabling
//! a workspace's subscriptions, and the trait the Slack adapter implements to deliver lanes
//! (see `crate::slack::deliver`).

use futures_util::future::BoxFuture;
use tokio::time::Instant;

use super::outbox::{ClaimedLane, LaneResult, PendingRow};
use crate::app::App;
use crate::db::now_millis;

/// The `platform` of a Slack subscription.
pub const PLATFORM: &str = "slack";
/// `event_type` of the metadata every Slack notification carries.
pub const METADATA_EVENT_TYPE: &str = "m365bot_case_notification";

/// Where a Slack lane posts: the workspace and the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlackAddress {
    /// Workspace (team) id, `T…`.
    pub team_id: String,
    /// Channel id, `C…`, `G…` or `D…`.
    pub channel_id: String,
}

impl SlackAddress {
    /// The conversation id of subscriptions and lanes: `slack:<team>:<channel>`.
    pub fn conversation_id(&self) -> String {
        format!("{PLATFORM}:{}:{}", self.team_id, self.channel_id)
    }

    /// The address of a `slack:<team>:<channel>` conversation id.
    pub fn parse(conversation_id: &str) -> Option<Self> {
        let rest = conversation_id.strip_prefix("slack:")?;
        let (team, channel) = rest.split_once(':')?;
        (!team.is_empty() && !channel.is_empty() && !channel.contains(':')).then(|| Self {
            team_id: team.to_owned(),
            channel_id: channel.to_owned(),
        })
    }
}

/// The Slack errors after which the channel cannot be posted to until someone acts, with
/// what to do.
pub fn channel_gone_advice(code: &str) -> Option<&'static str> {
    match code {
        "not_in_channel" => Some("invite the bot to the channel (/invite @m365bot)"),
        "channel_not_found" => {
            Some("the channel was deleted or the bot cannot see it; invite the bot to the channel")
        }
        "is_archived" => Some("the channel is archived; unarchive it"),
        _ => None,
    }
}

/// The Slack errors after which nothing can be posted in the workspace until the app is
/// reinstalled.
pub fn is_workspace_gone(code: &str) -> bool {
    matches!(code, "account_inactive" | "token_revoked" | "invalid_auth")
}

/// Delivers Slack lanes; implemented by the Slack adapter.
pub trait LaneDelivery: Send + Sync {
    /// Delivers the latest pending update (`latest`, with `older` merged into it) of the lane
    /// to `address`; fills `result` like the Teams path does.
    #[allow(clippy::too_many_arguments)]
    fn deliver<'a>(
        &'a self,
        app: &'a App,
        lane: &'a ClaimedLane,
        address: &'a SlackAddress,
        live: &'a [&'a PendingRow],
        latest: &'a PendingRow,
        older: &'a [&'a PendingRow],
        lease_deadline: Instant,
        result: &'a mut LaneResult,
    ) -> BoxFuture<'a, ()>;

    /// Tells the subscribers whose Slack subscription was disabled; returns the messages sent.
    fn send_owner_notices<'a>(&'a self, app: &'a App) -> BoxFuture<'a, Result<usize, sqlx::Error>>;
}

/// Disables every enabled Slack subscription of workspace `team_id` with `reason` (the app
/// was uninstalled, its tokens revoked): their pending deliveries become dead letters when a
/// worker meets them. Nobody is told (the bot can no longer post there). Returns how many.
pub async fn disable_slack_team(
    app: &App,
    team_id: &str,
    reason: &str,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE notify_subscriptions SET enabled = 0, disabled_reason = $1, disabled_at = $2, \
         owner_notice_due = 0 WHERE platform = $3 AND team_id = $4 AND enabled = 1",
    )
    .bind(reason)
    .bind(now_millis())
    .bind(PLATFORM)
    .bind(team_id)
    .execute(&app.db.pool)
    .await?;
    let count = done.rows_affected();
    app.metrics.record_slack(
        "disabled_subscriptions",
        usize::try_from(count).unwrap_or(0),
    );
    if count > 0 {
        tracing::warn!(
            slack.team = team_id,
            subscriptions = count,
            "Slack subscriptions of a workspace disabled"
        );
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_and_refuse_other_ids() {
        let address = SlackAddress {
            team_id: "T01".into(),
            channel_id: "C02".into(),
        };
        assert_eq!(address.conversation_id(), "slack:T01:C02");
        assert_eq!(SlackAddress::parse("slack:T01:C02"), Some(address));
        for other in [
            "19:abc@thread.tacv2",
            "slack:T01",
            "slack::C02",
            "slack:T:C:D",
            "a:T:C",
        ] {
            assert_eq!(SlackAddress::parse(other), None, "{other}");
        }
    }

    #[test]
    fn channel_and_workspace_errors_are_told_apart() {
        for code in ["not_in_channel", "channel_not_found", "is_archived"] {
            assert!(channel_gone_advice(code).is_some(), "{code}");
            assert!(!is_workspace_gone(code), "{code}");
        }
        for code in ["account_inactive", "token_revoked", "invalid_auth"] {
            assert!(is_workspace_gone(code), "{code}");
            assert!(channel_gone_advice(code).is_none(), "{code}");
        }
        assert!(channel_gone_advice("msg_too_long").is_none());
    }
}
