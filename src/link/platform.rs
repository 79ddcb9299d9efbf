//! What account linking needs from a chat platform whose users carry no Entra object id
//! (Slack): a rule tying the signed-in account to the chat user, and a private way to tell the
//! user the outcome. The adapter implements it; [`crate::app::App::link_platform`] finds it.

use futures_util::future::BoxFuture;

use super::store::ChatAddress;
use super::token::IdClaims;
use crate::core::Reply;

/// The account-linking side of a chat platform.
pub trait LinkPlatform: Send + Sync {
    /// Checks that the account signed in (`claims`) belongs to the chat user of `address`;
    /// the refusal card says why not and what to do.
    fn check_sign_in<'a>(
        &'a self,
        address: &'a ChatAddress,
        claims: &'a IdClaims,
    ) -> BoxFuture<'a, Result<(), Reply>>;

    /// Shows `reply` to the user of `address` alone.
    fn deliver<'a>(
        &'a self,
        address: &'a ChatAddress,
        reply: &'a Reply,
    ) -> BoxFuture<'a, Result<(), String>>;
}
