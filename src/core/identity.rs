//! What a chat platform says about one of its users, and the trait its adapter implements
//! to say it.

use futures_util::future::BoxFuture;

use crate::core::{InboundEvent, Reply};

/// What the platform says about a chat user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlatformIdentity {
    /// Platform user id.
    pub user_id: String,
    /// Display name.
    pub name: Option<String>,
    /// Entra object id.
    pub aad_object_id: Option<String>,
    /// E-mail address.
    pub email: Option<String>,
    /// User principal name.
    pub user_principal_name: Option<String>,
}

impl PlatformIdentity {
    /// The distinct non-empty e-mail and UPN values, lower-cased.
    pub fn addresses(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for value in [&self.email, &self.user_principal_name]
            .into_iter()
            .flatten()
        {
            let value = value.trim().to_lowercase();
            if !value.is_empty() && !out.contains(&value) {
                out.push(value);
            }
        }
        out
    }
}

/// A chat platform's user directory, implemented by each adapter.
pub trait PlatformDirectory: Send + Sync {
    /// The e-mail, UPN and name of `user_id` as seen from the event's conversation, or a card
    /// saying why the platform would not tell.
    fn lookup<'a>(
        &'a self,
        event: &'a InboundEvent,
        user_id: &'a str,
    ) -> BoxFuture<'a, Result<PlatformIdentity, Reply>>;
}
