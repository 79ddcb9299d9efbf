//! The wizard's state machine: the steps, the data collected so far, the inputs a card submit
//! or an effect result produces, and the pure [`transition`] between them.
//!
//! Slow work (Graph, ServiceNow, token requests) is an [`Effect`] returned by the transition;
//! its result comes back as [`Input::Done`]. While an effect runs the wizard is `busy`, so a
//! second submit of the same step is refused by the store's version check, not repeated.

use std::collections::BTreeMap;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::integration::AuthType;

/// One step of the wizard (guide step in the comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// What will be created and which permissions the bot uses. Agree / Cancel.
    Consent,
    /// Test environment toggle; Basic or AAD auth.
    Environment,
    /// Tenant domain, verified live.
    Tenant,
    /// Outbound Entra app (prerequisites 1-3).
    OutboundApp,
    /// ServiceNow outbound OAuth provider (prerequisites 8-10).
    OauthProvider,
    /// Inbound REST API Entra app, v1 tokens (prerequisites 4-5). AAD only.
    InboundApp,
    /// OIDC provider configuration (prerequisites 11-14). AAD only.
    OidcProvider,
    /// OIDC entity (prerequisite 15). AAD only.
    OidcEntity,
    /// REST-user Entra app (prerequisites 6-7). AAD only.
    RestUserApp,
    /// Integration user with `incident_manager`, web service access only (prerequisite 16).
    IntegrationUser,
    /// `oauth_entity` readable from the app's scope.
    CrossScope,
    /// Values for the Microsoft 365 admin center; Run tests; hand over.
    Complete,
    /// Cancelled by the admin.
    Cancelled,
}

impl Step {
    /// Short title of the step.
    pub fn title(self) -> &'static str {
        match self {
            Self::Consent => "What setup will do",
            Self::Environment => "Environment and authentication type",
            Self::Tenant => "Microsoft 365 tenant",
            Self::OutboundApp => "Outbound Entra app",
            Self::OauthProvider => "ServiceNow outbound OAuth provider",
            Self::InboundApp => "Inbound REST API Entra app",
            Self::OidcProvider => "ServiceNow OIDC provider configuration",
            Self::OidcEntity => "ServiceNow OIDC entity",
            Self::RestUserApp => "REST-user Entra app",
            Self::IntegrationUser => "Integration user",
            Self::CrossScope => "Cross-scope access to oauth_entity",
            Self::Complete => "Complete the integration",
            Self::Cancelled => "Setup cancelled",
        }
    }

    /// The doctor checks that verify this step.
    pub fn checks(self, auth: AuthType) -> &'static [&'static str] {
        match self {
            Self::Tenant => &["tenant"],
            Self::OutboundApp => &["outbound_app.token", "outbound_app.registration"],
            Self::OauthProvider => &["servicenow.oauth_provider"],
            Self::InboundApp => &["inbound_app.token", "inbound_app.registration"],
            Self::OidcProvider => &["servicenow.oidc_provider"],
            Self::OidcEntity => &["servicenow.oidc_entity"],
            Self::RestUserApp => &["rest_user_app.token", "rest_user_app.registration"],
            Self::IntegrationUser => match auth {
                AuthType::Aad => &["servicenow.integration_user", "servicenow.inbound_flow"],
                AuthType::Basic => &["servicenow.integration_user", "servicenow.basic_login"],
            },
            Self::CrossScope => &["servicenow.cross_scope"],
            Self::Consent | Self::Environment | Self::Complete | Self::Cancelled => &[],
        }
    }
}

/// The steps of a branch, in order.
pub fn sequence(auth: Option<AuthType>) -> &'static [Step] {
    match auth {
        Some(AuthType::Basic) => &[
            Step::Consent,
            Step::Environment,
            Step::Tenant,
            Step::OutboundApp,
            Step::OauthProvider,
            Step::IntegrationUser,
            Step::CrossScope,
            Step::Complete,
        ],
        Some(AuthType::Aad) | None => &[
            Step::Consent,
            Step::Environment,
            Step::Tenant,
            Step::OutboundApp,
            Step::OauthProvider,
            Step::InboundApp,
            Step::OidcProvider,
            Step::OidcEntity,
            Step::RestUserApp,
            Step::IntegrationUser,
            Step::CrossScope,
            Step::Complete,
        ],
    }
}

/// Which Entra app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppSlot {
    /// ServiceNow → Microsoft.
    Outbound,
    /// Microsoft → ServiceNow REST API (OIDC entity).
    Inbound,
    /// The integration user's app.
    RestUser,
}

impl AppSlot {
    /// The step that configures this app.
    pub fn step(self) -> Step {
        match self {
            Self::Outbound => Step::OutboundApp,
            Self::Inbound => Step::InboundApp,
            Self::RestUser => Step::RestUserApp,
        }
    }

    /// The slot of a step, if it is an app step.
    pub fn of(step: Step) -> Option<Self> {
        match step {
            Step::OutboundApp => Some(Self::Outbound),
            Step::InboundApp => Some(Self::Inbound),
            Step::RestUserApp => Some(Self::RestUser),
            _ => None,
        }
    }

    /// The secret slot of this app's client secret.
    pub fn secret(self) -> SecretSlot {
        match self {
            Self::Outbound => SecretSlot::OutboundSecret,
            Self::Inbound => SecretSlot::InboundSecret,
            Self::RestUser => SecretSlot::RestUserSecret,
        }
    }

    /// Display-name suffix of a created app.
    pub fn name_suffix(self) -> &'static str {
        match self {
            Self::Outbound => "outbound",
            Self::Inbound => "inbound REST API",
            Self::RestUser => "REST user",
        }
    }
}

/// Which ServiceNow record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordSlot {
    /// `oauth_entity` (third-party provider).
    OauthProvider,
    /// `oidc_provider_configuration`.
    OidcProvider,
    /// `oauth_oidc_entity`.
    OidcEntity,
}

impl RecordSlot {
    /// The slot of a step, if it is a record step.
    pub fn of(step: Step) -> Option<Self> {
        match step {
            Step::OauthProvider => Some(Self::OauthProvider),
            Step::OidcProvider => Some(Self::OidcProvider),
            Step::OidcEntity => Some(Self::OidcEntity),
            _ => None,
        }
    }

    /// The table of the record.
    pub fn table(self) -> &'static str {
        match self {
            Self::OauthProvider => "oauth_entity",
            Self::OidcProvider => "oidc_provider_configuration",
            Self::OidcEntity => "oauth_oidc_entity",
        }
    }
}

/// Where a secret is kept (encrypted) in the wizard's secret map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretSlot {
    /// Outbound app client secret.
    OutboundSecret,
    /// Inbound app client secret.
    InboundSecret,
    /// REST-user app client secret.
    RestUserSecret,
    /// Basic-auth integration user password.
    IntegrationPassword,
}

/// An Entra app the wizard recorded (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRecord {
    /// Client id.
    pub client_id: String,
    /// Display name, when known.
    pub name: Option<String>,
    /// True when the bot created or reused it by name (create for me).
    pub created: bool,
    /// True when this setup created it (not found, reused or entered): cancel may delete it.
    #[serde(default)]
    pub made: bool,
}

/// A ServiceNow record the wizard recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordRef {
    /// sys_id.
    pub sys_id: String,
    /// Its name.
    pub name: String,
    /// True when the bot created or updated it (create for me).
    pub created: bool,
    /// True when this setup created it (not found, corrected or picked): cancel may delete it.
    #[serde(default)]
    pub made: bool,
}

/// A verification verdict remembered for `setup status` (drift is a later verdict that differs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// `pass`, `fail` or `skip`.
    pub status: String,
    /// What was found.
    pub detail: String,
    /// When (unix ms).
    pub at: i64,
}

/// The data collected so far (no secrets: those live in [`Secrets`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collected {
    /// "This is a test environment".
    #[serde(default)]
    pub test_environment: bool,
    /// The branch, once chosen.
    #[serde(default)]
    pub auth_type: Option<AuthType>,
    /// Tenant domain.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Tenant id from the tenant's metadata.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// The three apps.
    #[serde(default)]
    pub apps: BTreeMap<String, AppRecord>,
    /// The ServiceNow records.
    #[serde(default)]
    pub records: BTreeMap<String, RecordRef>,
    /// Integration user name.
    #[serde(default)]
    pub integration_user: Option<String>,
    /// Whether the bot created the integration user.
    #[serde(default)]
    pub user_created: bool,
    /// The integration user's `sys_user` record, when this setup created it.
    #[serde(default)]
    pub user_record: Option<RecordRef>,
    /// What was deleted after a cancel (app client ids and record sys_ids).
    #[serde(default)]
    pub removed: Vec<String>,
    /// Last verdict per doctor check id.
    #[serde(default)]
    pub verified: BTreeMap<String, Verdict>,
    /// What the last effect did (created, reused, what differs), shown on the next card.
    #[serde(default)]
    pub notes: Vec<String>,
    /// Set by releases that showed the secrets on the completion card; kept so stored states read.
    #[serde(default)]
    pub secrets_shown: bool,
    /// The Repository ID the admin entered (when the instance URL does not tell it).
    #[serde(default)]
    pub repository_id: Option<String>,
    /// The Microsoft 365 admin the completion card was handed to.
    #[serde(default)]
    pub handed_over_to: Option<String>,
}

fn slot_key<T: Serialize>(slot: T) -> String {
    serde_json::to_value(slot)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

impl Collected {
    /// The recorded app of a slot.
    pub fn app(&self, slot: AppSlot) -> Option<&AppRecord> {
        self.apps.get(&slot_key(slot))
    }

    /// The recorded ServiceNow record of a slot.
    pub fn record(&self, slot: RecordSlot) -> Option<&RecordRef> {
        self.records.get(&slot_key(slot))
    }

    /// Records an app.
    pub fn set_app(&mut self, slot: AppSlot, app: AppRecord) {
        self.apps.insert(slot_key(slot), app);
    }

    /// Records a ServiceNow record.
    pub fn set_record(&mut self, slot: RecordSlot, record: RecordRef) {
        self.records.insert(slot_key(slot), record);
    }
}

/// The secrets collected so far; serialized only into the encrypted column.
#[derive(Debug, Clone, Default)]
pub struct Secrets(pub BTreeMap<SecretSlot, SecretString>);

impl Secrets {
    /// One secret.
    pub fn get(&self, slot: SecretSlot) -> Option<&SecretString> {
        self.0.get(&slot)
    }
}

/// An error shown on the step's card, beside the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepError {
    /// The input id the error belongs to (`None`: the whole step).
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
    /// What to do.
    pub fix: Option<String>,
    /// The upstream's own words (AADSTS code, trace id), shown collapsed under *Details*.
    #[serde(default)]
    pub details: Option<String>,
}

impl StepError {
    /// An error beside `field`.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.to_owned()),
            message: message.into(),
            fix: None,
            details: None,
        }
    }
}

/// The persisted wizard (without secrets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wizard {
    /// Where it is.
    pub step: Step,
    /// What it knows.
    pub data: Collected,
    /// The error to show on the current step, if the last attempt failed.
    #[serde(default)]
    pub error: Option<StepError>,
    /// Set while an effect of the current step runs (unix ms when it started).
    #[serde(default)]
    pub busy_since: Option<i64>,
}

impl Default for Wizard {
    fn default() -> Self {
        Self {
            step: Step::Consent,
            data: Collected::default(),
            error: None,
            busy_since: None,
        }
    }
}

impl Wizard {
    /// 1-based position and total of the current branch.
    pub fn position(&self) -> (usize, usize) {
        let steps = sequence(self.data.auth_type);
        let index = steps.iter().position(|s| *s == self.step).unwrap_or(0);
        (index + 1, steps.len())
    }

    fn next_step(&self) -> Step {
        let steps = sequence(self.data.auth_type);
        steps
            .iter()
            .position(|s| *s == self.step)
            .and_then(|i| steps.get(i + 1))
            .copied()
            .unwrap_or(Step::Complete)
    }

    fn previous_step(&self) -> Step {
        let steps = sequence(self.data.auth_type);
        steps
            .iter()
            .position(|s| *s == self.step)
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| steps.get(i))
            .copied()
            .unwrap_or(Step::Consent)
    }
}

/// *Create it for me* or *use an existing one*, for an app.
#[derive(Debug, Clone)]
pub enum AppChoice {
    /// Find by name or create, add a secret.
    Create,
    /// An app the admin registered: client id and secret.
    Existing {
        /// Client id.
        client_id: String,
        /// Client secret value.
        secret: SecretString,
    },
}

/// *Create it for me* or *use an existing one*, for a ServiceNow record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordChoice {
    /// Look up, create or update.
    Create,
    /// A record picked from the list (sys_id).
    Existing(String),
}

/// The integration user: created, or an existing one.
#[derive(Debug, Clone)]
pub enum UserChoice {
    /// Create (AAD: User ID = REST-user app client id; Basic: `user_name`, generated password).
    Create {
        /// Basic auth: the user name.
        user_name: Option<String>,
    },
    /// An existing user.
    Existing {
        /// User ID.
        user_name: String,
        /// Basic auth: its password.
        password: Option<SecretString>,
    },
}

/// What a submit or an effect result means, validated.
#[derive(Debug, Clone)]
pub enum Input {
    /// Consent given.
    Agree,
    /// Back one step.
    Back,
    /// Cancel the setup.
    Cancel,
    /// Environment step.
    Environment {
        /// Test environment.
        test_environment: bool,
        /// Basic (true) or AAD (false) auth.
        basic: bool,
    },
    /// Tenant domain.
    Tenant(String),
    /// An app step.
    App(AppChoice),
    /// A record step.
    Record(RecordChoice),
    /// The integration user step.
    User(UserChoice),
    /// Cross-scope step: check again, or apply the fix (repair).
    CrossScope {
        /// Apply the fix.
        repair: bool,
    },
    /// The result of the effect the current step started.
    Done(Box<EffectResult>),
}

/// Slow work for the effect runner.
#[derive(Debug, Clone)]
pub enum Effect {
    /// Fetch the tenant's OpenID metadata.
    VerifyTenant {
        /// Domain.
        domain: String,
    },
    /// Create or reuse an app, then verify it.
    App {
        /// Which app.
        slot: AppSlot,
        /// How.
        choice: AppChoice,
    },
    /// Create, update or pick a record, then verify it.
    Record {
        /// Which record.
        slot: RecordSlot,
        /// How.
        choice: RecordChoice,
    },
    /// Create or check the integration user.
    User(UserChoice),
    /// Check (and optionally repair) cross-scope access.
    CrossScope {
        /// Apply the fix.
        repair: bool,
    },
}

/// What an effect found: the data to record, or the error to show.
#[derive(Debug, Clone, Default)]
pub struct EffectResult {
    /// The step the effect belonged to.
    pub step: Option<Step>,
    /// The failure, if the step is not done.
    pub error: Option<StepError>,
    /// Tenant id found.
    pub tenant_id: Option<String>,
    /// App recorded.
    pub app: Option<(AppSlot, AppRecord)>,
    /// Record recorded.
    pub record: Option<(RecordSlot, RecordRef)>,
    /// Integration user recorded (name, created).
    pub user: Option<(String, bool)>,
    /// The integration user's record, when this run created it.
    pub user_record: Option<RecordRef>,
    /// Secrets to keep.
    pub secrets: Vec<(SecretSlot, SecretString)>,
    /// Verdicts of the checks that ran.
    pub verdicts: Vec<(String, Verdict)>,
    /// What was created, reused or differs.
    pub notes: Vec<String>,
}

/// Why an input was refused without any transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The input does not fit the step (an old card); show the current step.
    WrongStep,
    /// The step is waiting for its effect.
    Busy,
    /// The setup is finished or cancelled.
    Finished,
}

/// The result of a transition.
#[derive(Debug, Clone)]
pub struct Transition {
    /// The new state.
    pub wizard: Wizard,
    /// Secrets to add.
    pub secrets: Vec<(SecretSlot, SecretString)>,
    /// Work to do; its result comes back as [`Input::Done`].
    pub effects: Vec<Effect>,
}

fn stay_busy(wizard: &Wizard, now: i64, effect: Effect) -> Transition {
    let mut next = wizard.clone();
    next.busy_since = Some(now);
    next.error = None;
    Transition {
        wizard: next,
        secrets: Vec::new(),
        effects: vec![effect],
    }
}

fn move_to(wizard: &Wizard, step: Step) -> Transition {
    let mut next = wizard.clone();
    next.step = step;
    next.error = None;
    next.busy_since = None;
    next.data.notes.clear();
    Transition {
        wizard: next,
        secrets: Vec::new(),
        effects: Vec::new(),
    }
}

/// The pure transition: `(state, input) -> (next state, effects)`. `now` is unix ms.
pub fn transition(wizard: &Wizard, input: Input, now: i64) -> Result<Transition, Rejection> {
    if matches!(wizard.step, Step::Cancelled) {
        return Err(Rejection::Finished);
    }
    if wizard.busy_since.is_some() && !matches!(input, Input::Done(_)) {
        return Err(Rejection::Busy);
    }
    match input {
        Input::Cancel => Ok(move_to(wizard, Step::Cancelled)),
        Input::Back => Ok(move_to(wizard, wizard.previous_step())),
        Input::Agree if wizard.step == Step::Consent => Ok(move_to(wizard, Step::Environment)),
        Input::Environment {
            test_environment,
            basic,
        } if wizard.step == Step::Environment => {
            let mut next = wizard.clone();
            next.data.test_environment = test_environment;
            let auth = if basic {
                AuthType::Basic
            } else {
                AuthType::Aad
            };
            if next.data.auth_type != Some(auth) {
                // Switching branch keeps what both branches share.
                next.data.auth_type = Some(auth);
            }
            Ok(move_to(&next, Step::Tenant))
        }
        Input::Tenant(domain) if wizard.step == Step::Tenant => {
            let mut next = stay_busy(
                wizard,
                now,
                Effect::VerifyTenant {
                    domain: domain.clone(),
                },
            );
            next.wizard.data.tenant = Some(domain);
            Ok(next)
        }
        Input::App(choice) => match AppSlot::of(wizard.step) {
            Some(slot) => Ok(stay_busy(wizard, now, Effect::App { slot, choice })),
            None => Err(Rejection::WrongStep),
        },
        Input::Record(choice) => match RecordSlot::of(wizard.step) {
            Some(slot) => Ok(stay_busy(wizard, now, Effect::Record { slot, choice })),
            None => Err(Rejection::WrongStep),
        },
        Input::User(choice) if wizard.step == Step::IntegrationUser => {
            Ok(stay_busy(wizard, now, Effect::User(choice)))
        }
        Input::CrossScope { repair } if wizard.step == Step::CrossScope => {
            Ok(stay_busy(wizard, now, Effect::CrossScope { repair }))
        }
        Input::Done(result) => {
            if wizard.busy_since.is_none() || result.step.is_some_and(|s| s != wizard.step) {
                return Err(Rejection::WrongStep);
            }
            Ok(apply(wizard, *result, now))
        }
        _ => Err(Rejection::WrongStep),
    }
}

fn apply(wizard: &Wizard, result: EffectResult, now: i64) -> Transition {
    let mut next = wizard.clone();
    next.busy_since = None;
    for (id, verdict) in &result.verdicts {
        next.data.verified.insert(id.clone(), verdict.clone());
    }
    next.data.notes = result.notes.clone();
    if let Some(error) = result.error {
        next.error = Some(error);
        // An app this setup created before the failure is kept with its secret, so the retry
        // reuses both instead of creating a second app or secret.
        let mut secrets = Vec::new();
        if let Some((slot, app)) = result.app.filter(|(_, app)| app.created) {
            next.data.set_app(slot, app);
            secrets = result.secrets;
        }
        return Transition {
            wizard: next,
            secrets,
            effects: Vec::new(),
        };
    }
    if let Some(id) = result.tenant_id {
        next.data.tenant_id = Some(id);
    }
    if let Some((slot, app)) = result.app {
        next.data.set_app(slot, app);
    }
    if let Some((slot, record)) = result.record {
        next.data.set_record(slot, record);
    }
    if let Some((name, created)) = result.user {
        next.data.integration_user = Some(name);
        next.data.user_created = created;
        if result.user_record.is_some() || !created {
            next.data.user_record = result.user_record;
        }
    }
    let _ = now;
    next.error = None;
    let following = next.next_step();
    let notes = std::mem::take(&mut next.data.notes);
    let mut moved = move_to(&next, following);
    moved.wizard.data.notes = notes;
    moved.secrets = result.secrets;
    moved
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(step: Step, auth: Option<AuthType>) -> Wizard {
        let mut wizard = Wizard {
            step,
            ..Wizard::default()
        };
        wizard.data.auth_type = auth;
        wizard
    }

    fn ok(step: Step) -> Input {
        Input::Done(Box::new(EffectResult {
            step: Some(step),
            ..EffectResult::default()
        }))
    }

    fn failed(step: Step) -> Input {
        Input::Done(Box::new(EffectResult {
            step: Some(step),
            error: Some(StepError::field("client_secret", "AADSTS7000215")),
            ..EffectResult::default()
        }))
    }

    /// (state, input, expected step after, effects started, busy after)
    #[test]
    fn table_of_transitions() {
        let aad = Some(AuthType::Aad);
        let basic = Some(AuthType::Basic);
        let busy = |step, auth| {
            let mut w = at(step, auth);
            w.busy_since = Some(1);
            w
        };
        let cases: Vec<(Wizard, Input, Step, usize, bool)> = vec![
            (
                at(Step::Consent, None),
                Input::Agree,
                Step::Environment,
                0,
                false,
            ),
            (
                at(Step::Consent, None),
                Input::Cancel,
                Step::Cancelled,
                0,
                false,
            ),
            (
                at(Step::Consent, None),
                Input::Back,
                Step::Consent,
                0,
                false,
            ),
            (
                at(Step::Environment, None),
                Input::Environment {
                    test_environment: true,
                    basic: false,
                },
                Step::Tenant,
                0,
                false,
            ),
            (
                at(Step::Environment, None),
                Input::Back,
                Step::Consent,
                0,
                false,
            ),
            (
                at(Step::Tenant, aad),
                Input::Tenant("contoso.onmicrosoft.com".into()),
                Step::Tenant,
                1,
                true,
            ),
            (
                busy(Step::Tenant, aad),
                ok(Step::Tenant),
                Step::OutboundApp,
                0,
                false,
            ),
            (
                busy(Step::Tenant, aad),
                failed(Step::Tenant),
                Step::Tenant,
                0,
                false,
            ),
            (
                at(Step::OutboundApp, aad),
                Input::App(AppChoice::Create),
                Step::OutboundApp,
                1,
                true,
            ),
            (
                busy(Step::OutboundApp, aad),
                ok(Step::OutboundApp),
                Step::OauthProvider,
                0,
                false,
            ),
            (
                busy(Step::OauthProvider, aad),
                ok(Step::OauthProvider),
                Step::InboundApp,
                0,
                false,
            ),
            (
                busy(Step::OauthProvider, basic),
                ok(Step::OauthProvider),
                Step::IntegrationUser,
                0,
                false,
            ),
            (
                at(Step::InboundApp, aad),
                Input::Back,
                Step::OauthProvider,
                0,
                false,
            ),
            (
                busy(Step::InboundApp, aad),
                ok(Step::InboundApp),
                Step::OidcProvider,
                0,
                false,
            ),
            (
                busy(Step::OidcProvider, aad),
                ok(Step::OidcProvider),
                Step::OidcEntity,
                0,
                false,
            ),
            (
                busy(Step::OidcEntity, aad),
                ok(Step::OidcEntity),
                Step::RestUserApp,
                0,
                false,
            ),
            (
                busy(Step::RestUserApp, aad),
                ok(Step::RestUserApp),
                Step::IntegrationUser,
                0,
                false,
            ),
            (
                at(Step::IntegrationUser, basic),
                Input::Back,
                Step::OauthProvider,
                0,
                false,
            ),
            (
                busy(Step::IntegrationUser, aad),
                ok(Step::IntegrationUser),
                Step::CrossScope,
                0,
                false,
            ),
            (
                at(Step::CrossScope, aad),
                Input::CrossScope { repair: true },
                Step::CrossScope,
                1,
                true,
            ),
            (
                busy(Step::CrossScope, basic),
                ok(Step::CrossScope),
                Step::Complete,
                0,
                false,
            ),
            (
                at(Step::Complete, aad),
                Input::Back,
                Step::CrossScope,
                0,
                false,
            ),
        ];
        for (index, (wizard, input, step, effects, is_busy)) in cases.into_iter().enumerate() {
            let label = format!("case {index}: {:?} + {input:?}", wizard.step);
            let next = transition(&wizard, input, 5).unwrap_or_else(|e| panic!("{label}: {e:?}"));
            assert_eq!(next.wizard.step, step, "{label}");
            assert_eq!(next.effects.len(), effects, "{label}");
            assert_eq!(next.wizard.busy_since.is_some(), is_busy, "{label}");
        }
    }

    #[test]
    fn refusals() {
        let aad = Some(AuthType::Aad);
        let mut busy = at(Step::OutboundApp, aad);
        busy.busy_since = Some(1);
        // A second submit while the first one's effect runs never starts a second effect.
        assert_eq!(
            transition(&busy, Input::App(AppChoice::Create), 2).err(),
            Some(Rejection::Busy)
        );
        assert_eq!(
            transition(&busy, Input::Back, 2).err(),
            Some(Rejection::Busy)
        );
        // A stale card's input does not fit the step.
        assert_eq!(
            transition(&at(Step::Tenant, aad), Input::Agree, 2).err(),
            Some(Rejection::WrongStep)
        );
        assert_eq!(
            transition(
                &at(Step::Consent, aad),
                Input::Record(RecordChoice::Create),
                2
            )
            .err(),
            Some(Rejection::WrongStep)
        );
        // A result for another step, or without a running effect, is ignored.
        assert_eq!(
            transition(&busy, ok(Step::Tenant), 2).err(),
            Some(Rejection::WrongStep)
        );
        assert_eq!(
            transition(&at(Step::Tenant, aad), ok(Step::Tenant), 2).err(),
            Some(Rejection::WrongStep)
        );
        assert_eq!(
            transition(&at(Step::Cancelled, aad), Input::Back, 2).err(),
            Some(Rejection::Finished)
        );
    }

    #[test]
    fn results_record_data_secrets_and_errors() {
        let mut busy = at(Step::OutboundApp, Some(AuthType::Aad));
        busy.busy_since = Some(1);
        let result = EffectResult {
            step: Some(Step::OutboundApp),
            app: Some((
                AppSlot::Outbound,
                AppRecord {
                    client_id: "c1".into(),
                    name: None,
                    created: true,
                    made: true,
                },
            )),
            secrets: vec![(SecretSlot::OutboundSecret, SecretString::from("s"))],
            notes: vec!["created app".into()],
            verdicts: vec![(
                "outbound_app.token".into(),
                Verdict {
                    status: "pass".into(),
                    detail: "ok".into(),
                    at: 1,
                },
            )],
            ..EffectResult::default()
        };
        let next = transition(&busy, Input::Done(Box::new(result)), 3).expect("applies");
        assert_eq!(
            next.wizard
                .data
                .app(AppSlot::Outbound)
                .map(|a| a.client_id.as_str()),
            Some("c1")
        );
        assert_eq!(next.secrets.len(), 1);
        assert_eq!(next.wizard.data.notes, vec!["created app".to_owned()]);
        assert!(next.wizard.data.verified.contains_key("outbound_app.token"));
        // Serialized state carries no secret.
        let json = serde_json::to_string(&next.wizard).expect("json");
        assert!(!json.contains("\"s\""));
        // A failure keeps the step, shows the error and records nothing.
        let failed_next = transition(&busy, failed(Step::OutboundApp), 3).expect("applies");
        assert_eq!(failed_next.wizard.step, Step::OutboundApp);
        assert_eq!(
            failed_next
                .wizard
                .error
                .as_ref()
                .and_then(|e| e.field.as_deref()),
            Some("client_secret")
        );
        assert!(failed_next.wizard.data.app(AppSlot::Outbound).is_none());
    }

    #[test]
    fn branches_have_their_steps() {
        assert_eq!(sequence(Some(AuthType::Basic)).len(), 8);
        assert_eq!(sequence(Some(AuthType::Aad)).len(), 12);
        assert!(!sequence(Some(AuthType::Basic)).contains(&Step::InboundApp));
        assert_eq!(at(Step::Tenant, Some(AuthType::Basic)).position(), (3, 8));
    }
}
