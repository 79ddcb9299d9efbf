//! The Slack app manifest (`m365bot manifest --slack`): paste it into "Create an app > From a
//! manifest" at api.slack.com/apps. Valid against Slack's published schema
//! (`slackapi/manifest-schema`, version 1.0.0).

use serde_json::{Value, json};
use url::Url;

use super::{COMMANDS_PATH, EVENTS_PATH, INTERACTIONS_PATH, SLASH_COMMAND, Transport};

/// The bot token scopes the bot uses: the slash command, posting and updating messages
/// (`chat:write.public` for public channels it was not invited to), user e-mails for the
/// ServiceNow mapping, channel details, `@m365bot` mentions and direct messages (reading
/// them, and opening one to hand out personal answers), and the channel history (to find a
/// notification whose `chat.postMessage` outcome was unknown before posting it again).
pub const BOT_SCOPES: &[&str] = &[
    "commands",
    "chat:write",
    "chat:write.public",
    "users:read",
    "users:read.email",
    "channels:read",
    "groups:read",
    "app_mentions:read",
    "channels:history",
    "groups:history",
    "im:history",
    "im:write",
];

/// The events the bot answers: mentions in channels and direct messages.
pub const BOT_EVENTS: &[&str] = &["app_mention", "message.im"];
/// Events the bot subscribes to for its own removal (they need no scope).
pub const LIFECYCLE_EVENTS: &[&str] = &["app_uninstalled", "tokens_revoked"];

/// The manifest for a bot reachable at `public_url` over `transport` (in Socket Mode the
/// request URLs are left out: Slack does not call the bot).
pub fn manifest(public_url: &Url, transport: Transport) -> Value {
    let socket = transport == Transport::Socket;
    let url = |path: &str| {
        public_url
            .join(path.trim_start_matches('/'))
            .map(String::from)
            .unwrap_or_default()
    };
    let mut command = json!({
        "command": SLASH_COMMAND,
        "description": "Microsoft 365 support integration: setup, doctor, roles, case status",
        "usage_hint": "help | doctor | link-account | grant @user insights_user | roles",
        // Mentions arrive as <@U…> ids, which `grant @user` needs.
        "should_escape": true,
    });
    let mut interactivity = json!({"is_enabled": true});
    // Mentions and direct messages are answered; removals of the app reach the bot as events,
    // so that it deletes the workspace's token.
    let bot_events: Vec<&str> = BOT_EVENTS.iter().chain(LIFECYCLE_EVENTS).copied().collect();
    let mut event_subscriptions = json!({"bot_events": bot_events});
    if !socket {
        command["url"] = json!(url(COMMANDS_PATH));
        interactivity["request_url"] = json!(url(INTERACTIONS_PATH));
        event_subscriptions["request_url"] = json!(url(EVENTS_PATH));
    }
    json!({
        "_metadata": {"major_version": 1, "minor_version": 1},
        "display_information": {
            "name": "m365bot",
            "description": "Sets up, verifies and operates the Microsoft 365 support integration with ServiceNow.",
            "long_description": "m365bot sets up, verifies and operates the Microsoft 365 support integration between a ServiceNow instance and a Microsoft 365 tenant. Type /m365 help to see the commands: verify the integration end to end with doctor, see where setup stands, and list who holds the integration's roles. It is self-hosted: this app talks to your organisation's own m365bot.",
            "background_color": "#2c2d30",
        },
        "features": {
            "bot_user": {"display_name": "m365bot", "always_online": true},
            "app_home": {"home_tab_enabled": false, "messages_tab_enabled": true, "messages_tab_read_only_enabled": false},
            "slash_commands": [command],
        },
        "oauth_config": {
            // Installs into more workspaces (OAuth v2) come back here.
            "redirect_urls": [super::install::redirect_uri(public_url)],
            "scopes": {"bot": BOT_SCOPES},
        },
        "settings": {
            "event_subscriptions": event_subscriptions,
            "interactivity": interactivity,
            "org_deploy_enabled": false,
            "socket_mode_enabled": socket,
            "token_rotation_enabled": false,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_urls_follow_the_public_url_and_vanish_in_socket_mode() {
        let base = Url::parse("https://bot.contoso.example/m365/").expect("url");
        let http = manifest(&base, Transport::Http);
        assert_eq!(
            http["features"]["slash_commands"][0]["url"],
            "https://bot.contoso.example/m365/slack/commands"
        );
        assert_eq!(
            http["settings"]["interactivity"]["request_url"],
            "https://bot.contoso.example/m365/slack/interactions"
        );
        assert_eq!(http["settings"]["socket_mode_enabled"], false);
        assert_eq!(
            http["oauth_config"]["redirect_urls"][0],
            "https://bot.contoso.example/m365/slack/oauth/callback"
        );
        assert_eq!(
            http["settings"]["event_subscriptions"]["request_url"],
            "https://bot.contoso.example/m365/slack/events"
        );
        assert_eq!(
            http["settings"]["event_subscriptions"]["bot_events"],
            json!([
                "app_mention",
                "message.im",
                "app_uninstalled",
                "tokens_revoked"
            ])
        );
        let socket = manifest(&base, Transport::Socket);
        assert!(socket["features"]["slash_commands"][0].get("url").is_none());
        assert!(
            socket["settings"]["interactivity"]
                .get("request_url")
                .is_none()
        );
        assert_eq!(socket["settings"]["socket_mode_enabled"], true);
        assert!(
            socket["settings"]["event_subscriptions"]
                .get("request_url")
                .is_none()
        );
    }
}
