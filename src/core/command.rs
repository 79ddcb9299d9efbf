//! Parsing of chat commands, the same for Teams messages and Slack slash commands.

/// A role of the retired ServiceNow app that chat users can be granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppRole {
    /// `x_mioms_m365_assis.insights_user`
    InsightsUser,
    /// `x_mioms_m365_assis.administrator`
    Administrator,
}

/// The app whose client secret is rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretTarget {
    /// The outbound app: its secret lives in ServiceNow's outbound OAuth provider.
    Outbound,
    /// The inbound REST API app: its secret lives in ServiceNow's OIDC entity.
    Inbound,
    /// The REST-user app: its secret lives in the bot's encrypted store only.
    RestUser,
}

impl SecretTarget {
    /// Every target, in the order of the guide.
    pub const ALL: [Self; 3] = [Self::Outbound, Self::Inbound, Self::RestUser];

    /// Parses `outbound`, `inbound` or `rest-user` (case-insensitive; `rest_user` too).
    pub fn parse(word: &str) -> Option<Self> {
        match word.to_ascii_lowercase().replace('_', "-").as_str() {
            "outbound" => Some(Self::Outbound),
            "inbound" => Some(Self::Inbound),
            "rest-user" => Some(Self::RestUser),
            _ => None,
        }
    }

    /// The word a user types.
    pub fn word(self) -> &'static str {
        match self {
            Self::Outbound => "outbound",
            Self::Inbound => "inbound",
            Self::RestUser => "rest-user",
        }
    }
}

/// A command typed by a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `help`
    Help,
    /// `setup`
    Setup,
    /// `setup status`
    SetupStatus,
    /// `doctor [--repair]`
    Doctor {
        /// Offer fixes.
        repair: bool,
    },
    /// `link-account`
    LinkAccount,
    /// `link-account status`
    LinkAccountStatus,
    /// `unlink-account`
    UnlinkAccount,
    /// `grant <user> insights_user|administrator`
    Grant {
        /// The user as typed (mention, e-mail or user name).
        user: String,
        /// The role.
        role: AppRole,
    },
    /// `revoke <user> insights_user|administrator`
    Revoke {
        /// The user as typed.
        user: String,
        /// The role.
        role: AppRole,
    },
    /// `roles`
    Roles,
    /// `subscribe [filter]`
    Subscribe {
        /// The filter text, possibly empty.
        filter: String,
    },
    /// `unsubscribe`
    Unsubscribe,
    /// `subscriptions`
    Subscriptions,
    /// `status <case or incident>`
    Status {
        /// Case number, incident number or sys_id.
        reference: String,
    },
    /// `rotate-secret outbound|inbound|rest-user`
    RotateSecret {
        /// Whose client secret.
        target: SecretTarget,
    },
}

/// Why a text is not a command; the message says what to type instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Nothing was typed.
    #[error("Type **help** to see what I can do.")]
    Empty,
    /// The first word (as typed, without surrounding punctuation) is no command.
    #[error("{}", unknown_text(.0))]
    Unknown(String),
    /// The command is known but its arguments are wrong.
    #[error("Usage: **{usage}**")]
    Usage {
        /// The correct form.
        usage: &'static str,
    },
}

fn unknown_text(word: &str) -> String {
    if word.is_empty() {
        "I understand commands, not free text. Type **help** to see them.".to_owned()
    } else {
        format!("\"{word}\" is not one of my commands. Type **help** to see the ones I understand.")
    }
}

/// The first word of free text, without the punctuation around it ("hi," -> "hi").
fn bare_word(word: &str) -> String {
    truncate(
        word.trim_matches(|c: char| !c.is_alphanumeric() && c != '-'),
        40,
    )
}

/// Parses a message text, with or without a leading `/m365` or `m365`.
pub fn parse(text: &str) -> Result<Command, ParseError> {
    let mut words: Vec<&str> = text.split_whitespace().collect();
    if matches!(
        words.first().map(|w| w.to_ascii_lowercase()).as_deref(),
        Some("/m365" | "m365" | "@m365bot" | "m365bot")
    ) {
        words.remove(0);
    }
    let Some((typed, rest)) = words.split_first() else {
        return Err(ParseError::Empty);
    };
    let first = typed.to_ascii_lowercase();
    let rest_lower: Vec<String> = rest.iter().map(|w| w.to_ascii_lowercase()).collect();
    let rest_lower: Vec<&str> = rest_lower.iter().map(String::as_str).collect();
    match (first.as_str(), rest_lower.as_slice()) {
        ("help" | "?", _) => Ok(Command::Help),
        ("setup", []) => Ok(Command::Setup),
        ("setup", ["status"]) => Ok(Command::SetupStatus),
        ("setup", _) => Err(ParseError::Usage {
            usage: "setup | setup status",
        }),
        ("doctor", []) => Ok(Command::Doctor { repair: false }),
        ("doctor", ["--repair" | "repair"]) => Ok(Command::Doctor { repair: true }),
        ("doctor", _) => Err(ParseError::Usage {
            usage: "doctor [--repair]",
        }),
        ("link-account", []) => Ok(Command::LinkAccount),
        ("link-account", ["status"]) => Ok(Command::LinkAccountStatus),
        ("link-account", _) => Err(ParseError::Usage {
            usage: "link-account | link-account status",
        }),
        ("unlink-account", []) => Ok(Command::UnlinkAccount),
        ("unlink-account", _) => Err(ParseError::Usage {
            usage: "unlink-account",
        }),
        ("grant" | "revoke", _) => parse_role_change(&first, rest),
        ("roles", []) => Ok(Command::Roles),
        ("roles", _) => Err(ParseError::Usage { usage: "roles" }),
        ("subscribe", _) => Ok(Command::Subscribe {
            filter: rest.join(" "),
        }),
        ("unsubscribe", []) => Ok(Command::Unsubscribe),
        ("unsubscribe", _) => Err(ParseError::Usage {
            usage: "unsubscribe",
        }),
        ("subscriptions", []) => Ok(Command::Subscriptions),
        ("subscriptions", _) => Err(ParseError::Usage {
            usage: "subscriptions",
        }),
        ("status", [_]) => Ok(Command::Status {
            reference: rest[0].to_owned(),
        }),
        ("status", _) => Err(ParseError::Usage {
            usage: "status <case or incident number>",
        }),
        ("rotate-secret", [word]) => SecretTarget::parse(word)
            .map(|target| Command::RotateSecret { target })
            .ok_or(ParseError::Usage {
                usage: ROTATE_USAGE,
            }),
        ("rotate-secret", _) => Err(ParseError::Usage {
            usage: ROTATE_USAGE,
        }),
        _ => Err(ParseError::Unknown(bare_word(typed))),
    }
}

/// How `rotate-secret` is typed.
const ROTATE_USAGE: &str = "rotate-secret outbound|inbound|rest-user";

fn parse_role_change(verb: &str, rest: &[&str]) -> Result<Command, ParseError> {
    let usage = if verb == "grant" {
        "grant @user insights_user|administrator"
    } else {
        "revoke @user insights_user|administrator"
    };
    let Some((role_word, user_words)) = rest.split_last() else {
        return Err(ParseError::Usage { usage });
    };
    let role = match role_word
        .to_ascii_lowercase()
        .trim_start_matches("x_mioms_m365_assis.")
    {
        "insights_user" => AppRole::InsightsUser,
        "administrator" | "admin" => AppRole::Administrator,
        _ => return Err(ParseError::Usage { usage }),
    };
    let user = user_words.join(" ");
    if user.trim().is_empty() {
        return Err(ParseError::Usage { usage });
    }
    Ok(if verb == "grant" {
        Command::Grant { user, role }
    } else {
        Command::Revoke { user, role }
    })
}

fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_with_and_without_prefix() {
        let cases = [
            ("help", Command::Help),
            ("/m365 setup", Command::Setup),
            ("m365 setup status", Command::SetupStatus),
            ("SETUP", Command::Setup),
            ("doctor --repair", Command::Doctor { repair: true }),
            ("link-account", Command::LinkAccount),
            ("link-account status", Command::LinkAccountStatus),
            (
                "subscribe severity:high",
                Command::Subscribe {
                    filter: "severity:high".to_owned(),
                },
            ),
            (
                "subscribe",
                Command::Subscribe {
                    filter: String::new(),
                },
            ),
            (
                "rotate-secret rest-user",
                Command::RotateSecret {
                    target: SecretTarget::RestUser,
                },
            ),
            (
                "status INC0010001",
                Command::Status {
                    reference: "INC0010001".to_owned(),
                },
            ),
            (
                "grant <at>Alex Wilber</at> insights_user",
                Command::Grant {
                    user: "<at>Alex Wilber</at>".to_owned(),
                    role: AppRole::InsightsUser,
                },
            ),
            (
                "revoke alex@contoso.com administrator",
                Command::Revoke {
                    user: "alex@contoso.com".to_owned(),
                    role: AppRole::Administrator,
                },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn bad_input_says_what_to_type() {
        assert_eq!(parse("   "), Err(ParseError::Empty));
        assert_eq!(parse("/m365"), Err(ParseError::Empty));
        assert_eq!(
            parse("frobnicate now"),
            Err(ParseError::Unknown("frobnicate".to_owned()))
        );
        // Free text: the first word as typed, without its punctuation.
        assert_eq!(
            parse("Hi, can you help?"),
            Err(ParseError::Unknown("Hi".to_owned()))
        );
        assert_eq!(
            parse("«¿what?»"),
            Err(ParseError::Unknown("what".to_owned()))
        );
        assert_eq!(
            parse("...").map_err(|e| e.to_string()),
            Err("I understand commands, not free text. Type **help** to see them.".to_owned())
        );
        assert_eq!(
            ParseError::Unknown("hi".to_owned()).to_string(),
            "\"hi\" is not one of my commands. Type **help** to see the ones I understand."
        );
        assert!(matches!(
            parse("grant alex superuser"),
            Err(ParseError::Usage { .. })
        ));
        assert!(matches!(
            parse("grant insights_user"),
            Err(ParseError::Usage { .. })
        ));
        assert!(matches!(parse("status"), Err(ParseError::Usage { .. })));
        assert!(matches!(
            parse("rotate-secret graph"),
            Err(ParseError::Usage { .. })
        ));
        assert!(matches!(
            parse("rotate-secret"),
            Err(ParseError::Usage { .. })
        ));
        assert!(
            parse("setup now")
                .expect_err("usage")
                .to_string()
                .contains("setup status")
        );
    }
}
