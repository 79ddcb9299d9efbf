//! In-process, stateful emulators of ServiceNow, Entra ID and Microsoft Graph.
//!
//! [`Sandbox::start`] binds three axum servers on loopback (ephemeral ports by default), one per
//! emulator, so each has its own base URL exactly like the real services:
//!
//! | emulator | real base URL | sandbox base URL ([`SandboxUrls`]) |
//! |---|---|---|
//! | ServiceNow | `https://dev12345.service-now.com` | `servicenow` |
//! | Entra ID | `https://login.microsoftonline.com` | `entra` (the authority; paths start with `/{tenant}/`) |
//! | Microsoft Graph | `https://graph.microsoft.com` | `graph` (paths start with `/v1.0/`) |
//!
//! They speak the wire format of the samples in `reference/samples/servicenow-entra-graph/`
//! and share one in-memory world guarded by a mutex: the Entra and Graph emulators share the
//! app registry, so an application created and given a secret through Graph can get tokens
//! from Entra at once. [`SandboxHandle`] lets tests and the `sandbox` command read and change
//! that world (records, apps, the signed-in user, service-health issues, faults and the
//! misconfiguration knobs used by doctor and wizard tests).
//!
//! Seed (see [`DemoCredentials`] for the values): one tenant with an organization, two
//! verified domains and one pre-existing application registration (the bot's own Graph
//! management app, with a known secret, so the bot can call Graph at all); one ServiceNow
//! instance with an `admin` user, a plain user `jane.doe`, the standard roles, the cross-scope
//! configuration rows, an inbound OAuth client for `/oauth_token.do` and a few incidents; three
//! Microsoft 365 service-health issues.

pub mod entra;
pub mod faults;
pub mod graph;
pub mod servicenow;
pub mod slack;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context;
use chrono::{DateTime, Utc};
use rand::Rng;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use entra::{
    AppRegistration, AuthorizeOutcome, DirectoryRoleAssignment, PasswordCredential, SignedInUser,
};
pub use faults::{AuthMethod, Emulator, FaultConfig, LoggedRequest};
pub use graph::{IssueAdvance, IssuePost, ServiceHealthIssue};

/// Base URLs of the three emulators, without a trailing slash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxUrls {
    /// ServiceNow instance, e.g. `http://127.0.0.1:41000` (stands for `https://dev12345.service-now.com`).
    pub servicenow: String,
    /// Entra authority, e.g. `http://127.0.0.1:41001` (stands for `https://login.microsoftonline.com`).
    pub entra: String,
    /// Graph root, e.g. `http://127.0.0.1:41002` (stands for `https://graph.microsoft.com`);
    /// the API itself is under `/v1.0`.
    pub graph: String,
}

impl SandboxUrls {
    /// The Graph v1.0 API base, e.g. `http://127.0.0.1:41002/v1.0`.
    pub fn graph_v1(&self) -> String {
        format!("{}/v1.0", self.graph)
    }
}

/// Ports to bind; 0 picks a free one (the default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SandboxPorts {
    /// ServiceNow emulator port.
    pub servicenow: u16,
    /// Entra ID emulator port.
    pub entra: u16,
    /// Graph emulator port.
    pub graph: u16,
}

/// How the sandbox is seeded and started.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// Address to bind; loopback by default. The emulators have no real security: never bind
    /// them to a public interface.
    pub bind_ip: IpAddr,
    /// Ports to bind.
    pub ports: SandboxPorts,
    /// Tenant id (GUID) of the demo tenant.
    pub tenant_id: String,
    /// The tenant's initial domain, e.g. `contoso.onmicrosoft.com`.
    pub tenant_domain: String,
    /// An extra verified (default) domain, e.g. `contoso.com`.
    pub custom_domain: Option<String>,
    /// Organization display name.
    pub organization_name: String,
    /// ServiceNow instance name (`dev12345` of `dev12345.service-now.com`); used in seeded
    /// redirect URLs and the instance's display name only.
    pub instance_name: String,
    /// Incident column that carries the Microsoft case reference (added to the `incident`
    /// table if it is not a standard column).
    pub case_reference_field: String,
    /// ServiceNow password of the `admin` user.
    pub servicenow_admin_password: String,
    /// ServiceNow password of the plain user `jane.doe`.
    pub servicenow_user_password: String,
    /// Page size of Graph collections when the client sends no `Prefer: odata.maxpagesize`.
    pub graph_page_size: usize,
    /// Faults of the ServiceNow emulator at start.
    pub servicenow_faults: FaultConfig,
    /// Faults of the Entra emulator at start.
    pub entra_faults: FaultConfig,
    /// Faults of the Graph emulator at start.
    pub graph_faults: FaultConfig,
    /// ServiceNow columns no public source confirms ([`servicenow::UNVERIFIED_COLUMNS`]) get
    /// other names (`u_<column>`, labels kept), as on a release that names them differently.
    pub servicenow_renamed_columns: bool,
    /// ServiceNow holds records that are not the integration's, seeded first: the company's
    /// SSO OIDC provider configuration and its entity, and another outbound OAuth provider.
    pub servicenow_decoys: bool,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        Self {
            bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            ports: SandboxPorts::default(),
            tenant_id: "8eaef023-2b34-4da1-9baa-8bc8c9d6a490".to_owned(),
            tenant_domain: "contoso.onmicrosoft.com".to_owned(),
            custom_domain: Some("contoso.com".to_owned()),
            organization_name: "Contoso".to_owned(),
            instance_name: "dev12345".to_owned(),
            case_reference_field: "correlation_id".to_owned(),
            servicenow_admin_password: "sandbox-admin-password".to_owned(),
            servicenow_user_password: "sandbox-user-password".to_owned(),
            graph_page_size: 100,
            servicenow_faults: FaultConfig::default(),
            entra_faults: FaultConfig::default(),
            graph_faults: FaultConfig::default(),
            servicenow_renamed_columns: false,
            servicenow_decoys: false,
        }
    }
}

/// The fixed demo identities and sandbox-only secrets of a started sandbox.
#[derive(Debug, Clone)]
pub struct DemoCredentials {
    /// Tenant id (GUID).
    pub tenant_id: String,
    /// Initial verified domain of the tenant.
    pub tenant_domain: String,
    /// ServiceNow admin user name (`admin`, role `admin`).
    pub servicenow_admin_user: String,
    /// Its password.
    pub servicenow_admin_password: String,
    /// ServiceNow plain user (`jane.doe`, no `admin` role).
    pub servicenow_plain_user: String,
    /// Its password.
    pub servicenow_plain_password: String,
    /// Client id of the inbound OAuth client (`oauth_entity` type `client`) for `/oauth_token.do`.
    pub servicenow_oauth_client_id: String,
    /// Its secret.
    pub servicenow_oauth_client_secret: String,
    /// Client id of the pre-registered Entra app the bot uses to call Graph (app-only).
    pub graph_client_id: String,
    /// Its secret (valid for two years from start).
    pub graph_client_secret: String,
    /// UPN of the user the authorize endpoint signs in by default.
    pub signed_in_upn: String,
}

/// One emulator's address, for [`Sandbox`].
struct Bound {
    listener: TcpListener,
    url: String,
}

async fn bind(ip: IpAddr, port: u16, what: &str) -> anyhow::Result<Bound> {
    let listener = TcpListener::bind(SocketAddr::new(ip, port))
        .await
        .with_context(|| {
            format!("sandbox: cannot listen for the {what} emulator on {ip}:{port}")
        })?;
    let addr = listener
        .local_addr()
        .with_context(|| format!("sandbox: no local address for the {what} emulator"))?;
    let url = match addr.ip() {
        IpAddr::V6(v6) => format!("http://[{v6}]:{}", addr.port()),
        IpAddr::V4(v4) => format!("http://{v4}:{}", addr.port()),
    };
    Ok(Bound { listener, url })
}

/// The three running emulators. Dropping it stops them; [`Sandbox::shutdown`] waits for that.
pub struct Sandbox {
    urls: SandboxUrls,
    handle: SandboxHandle,
    demo: DemoCredentials,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Sandbox {
    /// Seeds the world, binds the three listeners and starts serving.
    pub async fn start(options: SandboxOptions) -> anyhow::Result<Self> {
        let sn = bind(options.bind_ip, options.ports.servicenow, "ServiceNow").await?;
        let entra_bound = bind(options.bind_ip, options.ports.entra, "Entra ID").await?;
        let graph_bound = bind(options.bind_ip, options.ports.graph, "Graph").await?;
        let urls = SandboxUrls {
            servicenow: sn.url.clone(),
            entra: entra_bound.url.clone(),
            graph: graph_bound.url.clone(),
        };
        let keys = entra::SigningKeys::load().context("sandbox signing key")?;
        let (world, demo) = World::seed(&options, &urls);
        let shared = Arc::new(Shared {
            world: Mutex::new(world),
            keys,
            urls: urls.clone(),
            faults: faults::FaultHub::new(
                options.servicenow_faults.clone(),
                options.entra_faults.clone(),
                options.graph_faults.clone(),
            ),
            graph_page_size: options.graph_page_size.max(1),
        });
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();
        for (bound, router) in [
            (sn, servicenow::router(shared.clone())),
            (entra_bound, entra::router(shared.clone())),
            (graph_bound, graph::router(shared.clone())),
        ] {
            let stop = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                let served = axum::serve(bound.listener, router)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await;
                if let Err(err) = served {
                    tracing::error!(error = %err, url = %bound.url, "sandbox emulator stopped");
                }
            }));
        }
        tracing::info!(
            servicenow = %urls.servicenow,
            entra = %urls.entra,
            graph = %urls.graph,
            "sandbox emulators listening"
        );
        Ok(Self {
            urls,
            handle: SandboxHandle { shared },
            demo,
            shutdown,
            tasks,
        })
    }

    /// Base URLs of the emulators.
    pub fn urls(&self) -> &SandboxUrls {
        &self.urls
    }

    /// A handle to inspect and change the emulated world (cheap to clone).
    pub fn handle(&self) -> SandboxHandle {
        self.handle.clone()
    }

    /// The demo identities and sandbox-only secrets.
    pub fn demo(&self) -> &DemoCredentials {
        &self.demo
    }

    /// Stops the servers and waits until they are down.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// State shared by the three routers and the handle.
pub(crate) struct Shared {
    pub(crate) world: Mutex<World>,
    pub(crate) keys: entra::SigningKeys,
    pub(crate) urls: SandboxUrls,
    pub(crate) faults: faults::FaultHub,
    pub(crate) graph_page_size: usize,
}

impl Shared {
    /// Locks the world; a poisoned lock is recovered (the emulators never leave it half-written
    /// on purpose, and a test panicking elsewhere must not take the sandbox down).
    pub(crate) fn world(&self) -> MutexGuard<'_, World> {
        self.world
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Everything the emulators remember.
pub(crate) struct World {
    pub(crate) sn: servicenow::SnState,
    pub(crate) dir: entra::Directory,
    pub(crate) health: graph::HealthState,
}

impl World {
    fn seed(options: &SandboxOptions, urls: &SandboxUrls) -> (Self, DemoCredentials) {
        let (dir, graph_client_id, graph_client_secret, signed_in_upn) =
            entra::Directory::seed(options);
        let sn = servicenow::SnState::seed(options, &urls.servicenow);
        let demo = DemoCredentials {
            tenant_id: options.tenant_id.clone(),
            tenant_domain: options.tenant_domain.clone(),
            servicenow_admin_user: "admin".to_owned(),
            servicenow_admin_password: options.servicenow_admin_password.clone(),
            servicenow_plain_user: "jane.doe".to_owned(),
            servicenow_plain_password: options.servicenow_user_password.clone(),
            servicenow_oauth_client_id: servicenow::SEED_OAUTH_CLIENT_ID.to_owned(),
            servicenow_oauth_client_secret: servicenow::SEED_OAUTH_CLIENT_SECRET.to_owned(),
            graph_client_id,
            graph_client_secret,
            signed_in_upn,
        };
        let health = graph::HealthState::seed();
        (Self { sn, dir, health }, demo)
    }
}

/// Test and CLI access to the emulated world.
#[derive(Clone)]
pub struct SandboxHandle {
    shared: Arc<Shared>,
}

impl SandboxHandle {
    /// Base URLs of the emulators.
    pub fn urls(&self) -> &SandboxUrls {
        &self.shared.urls
    }

    // ---- faults ----

    /// Replaces the fault configuration of one emulator (takes effect on the next request).
    pub fn set_faults(&self, emulator: Emulator, config: FaultConfig) {
        self.shared.faults.set(emulator, config);
    }

    /// The current fault configuration of one emulator.
    pub fn faults(&self, emulator: Emulator) -> FaultConfig {
        self.shared.faults.get(emulator)
    }

    /// The requests one emulator received, with arrival time, status and `Retry-After`
    /// (the latest 10 000), oldest first.
    pub fn request_log(&self, emulator: Emulator) -> Vec<faults::LoggedRequest> {
        self.shared.faults.request_log(emulator)
    }

    /// How many requests one emulator has received since start (faulted ones included).
    pub fn request_count(&self, emulator: Emulator) -> u64 {
        self.shared.faults.request_count(emulator)
    }

    // ---- ServiceNow ----

    /// All records of a ServiceNow table (child tables included, as the Table API lists them),
    /// with raw stored values (references as sys_ids, passwords masked as ""). `None` if the
    /// table does not exist.
    pub fn sn_records(
        &self,
        table: &str,
    ) -> Option<Vec<serde_json::Map<String, serde_json::Value>>> {
        self.shared.world().sn.export_records(table)
    }

    /// One record by sys_id (raw values), if present.
    pub fn sn_record(
        &self,
        table: &str,
        sys_id: &str,
    ) -> Option<serde_json::Map<String, serde_json::Value>> {
        self.shared.world().sn.export_record(table, sys_id)
    }

    /// Records of `table` matching an encoded query (same engine as the Table API, no ACLs).
    pub fn sn_query(
        &self,
        table: &str,
        encoded_query: &str,
    ) -> Option<Vec<serde_json::Map<String, serde_json::Value>>> {
        self.shared.world().sn.export_query(table, encoded_query)
    }

    /// Inserts a record as `admin` with the same business rules as a REST POST; explicit
    /// `sys_*` values (e.g. `sys_updated_on`) are kept. Returns the sys_id.
    pub fn sn_insert(&self, table: &str, fields: serde_json::Value) -> Result<String, String> {
        self.shared.world().sn.insert_as_system(table, &fields)
    }

    /// Updates a record as `admin` like a REST PATCH (sys_mod_count and sys_updated_on move).
    pub fn sn_update(
        &self,
        table: &str,
        sys_id: &str,
        fields: serde_json::Value,
    ) -> Result<(), String> {
        self.shared
            .world()
            .sn
            .update_as_system(table, sys_id, &fields)
    }

    /// The stored value of a password column (e.g. `oauth_entity.client_secret`), which the
    /// Table API never returns: lets tests check what the bot wrote. `None` if absent.
    pub fn sn_stored_password(&self, table: &str, sys_id: &str, column: &str) -> Option<String> {
        self.shared.world().sn.stored_value(table, sys_id, column)
    }

    /// Deletes a record; false if it did not exist.
    pub fn sn_delete(&self, table: &str, sys_id: &str) -> bool {
        self.shared.world().sn.delete_as_system(table, sys_id)
    }

    /// Adds a column to a table (and its `sys_dictionary` row).
    pub fn sn_add_column(
        &self,
        table: &str,
        element: &str,
        internal_type: &str,
    ) -> Result<(), String> {
        self.shared
            .world()
            .sn
            .add_column(table, element, internal_type, None)
    }

    /// Adds a table with `(column, internal_type)` columns (`reference:<table>` for
    /// references), for the retired app's own tables whose schema is not public.
    pub fn sn_add_table(
        &self,
        name: &str,
        label: &str,
        columns: &[(&str, &str)],
    ) -> Result<(), String> {
        self.shared.world().sn.add_table(name, label, columns)
    }

    /// Misconfiguration knob: removes `role` from the user `user_name`; true if a grant was removed.
    pub fn sn_remove_role(&self, user_name: &str, role: &str) -> bool {
        self.shared.world().sn.remove_role(user_name, role)
    }

    /// Grants `role` to `user_name`; false if the user or the role is unknown.
    pub fn sn_grant_role(&self, user_name: &str, role: &str) -> bool {
        self.shared.world().sn.grant_role(user_name, role)
    }

    /// Misconfiguration knob: whether `oauth_entity` may be read from other application scopes
    /// (`sys_db_object.read_access` and the `access` "Accessible from" column of its row).
    /// Turning it off also writes the refusal the app would log to `syslog`.
    pub fn sn_set_oauth_entity_cross_scope_readable(&self, readable: bool) {
        self.shared
            .world()
            .sn
            .set_cross_scope_readable("oauth_entity", readable);
    }

    /// Makes the ServiceNow emulator push signed case changes to the bot, acting as the
    /// Business Rule of `m365bot servicenow-script` (`None` stops it).
    pub fn sn_set_push_target(&self, target: Option<servicenow::PushTarget>) {
        self.shared.world().sn.set_push_target(target);
    }

    /// Row ACL knob: hides a record from every caller but `admin` (lists then come back
    /// short, as `sysparm_limit` is applied before ACLs).
    pub fn sn_set_row_hidden(&self, sys_id: &str, hidden: bool) {
        self.shared.world().sn.set_row_hidden(sys_id, hidden);
    }

    /// Row ACL knob: only callers with `role` (or `admin`) may read the record; `None` lifts
    /// it. Lists omit the row for others and a read by sys_id answers 404 "No Record found",
    /// as ServiceNow does for rows its security constraints remove.
    pub fn sn_set_read_role(&self, sys_id: &str, role: Option<&str>) {
        self.shared.world().sn.set_read_role(sys_id, role);
    }

    /// Adds a client secret with the given text to an app (a person adding a secret back in
    /// the portal), so a stored secret works again. False if the app is unknown.
    pub fn add_secret(&self, client_id: &str, secret: &str) -> bool {
        self.shared.world().dir.add_secret_text(client_id, secret)
    }

    // ---- Entra / Graph app registry ----

    /// Every application registration of the demo tenant.
    pub fn apps(&self) -> Vec<AppRegistration> {
        self.shared.world().dir.apps.clone()
    }

    /// One application by client id (`appId`).
    pub fn app(&self, client_id: &str) -> Option<AppRegistration> {
        self.shared.world().dir.app_by_client_id(client_id).cloned()
    }

    /// Registers an application directly (as if created in the portal, service principal
    /// included) and gives it a secret; returns `(client_id, secret)`.
    pub fn create_app(&self, display_name: &str, redirect_uris: &[&str]) -> (String, String) {
        self.shared
            .world()
            .dir
            .create_app_with_secret(display_name, redirect_uris)
    }

    /// Misconfiguration knob "wrong secret": replaces every secret of the app by a new one and
    /// returns it, so a secret stored by the bot is rejected (AADSTS7000215). `None` if unknown.
    pub fn rotate_secret(&self, client_id: &str) -> Option<String> {
        self.shared.world().dir.rotate_secret(client_id)
    }

    /// Misconfiguration knob: withdraws the app's Graph application permissions, so its
    /// app-only tokens carry no `roles` and Graph answers 403 to every call. False if unknown.
    pub fn revoke_graph_permissions(&self, client_id: &str) -> bool {
        let mut world = self.shared.world();
        match world.dir.app_by_client_id_mut(client_id) {
            Some(app) => {
                app.graph_roles.clear();
                true
            }
            None => false,
        }
    }

    /// Entra ID replication lag: for `lag` after creation a new app is unknown to token
    /// requests (AADSTS700016) and Graph (404, or 400 "does not reference a valid application
    /// object"), and a new secret is refused (AADSTS7000215).
    pub fn set_replication_lag(&self, lag: std::time::Duration) {
        self.shared.world().dir.replication_lag =
            chrono::Duration::from_std(lag).unwrap_or_else(|_| chrono::Duration::zero());
    }

    /// Misconfiguration knob: sets the app's `signInAudience` (e.g. `AzureADMultipleOrgs`).
    pub fn set_sign_in_audience(&self, client_id: &str, audience: &str) -> bool {
        let mut world = self.shared.world();
        match world.dir.app_by_client_id_mut(client_id) {
            Some(app) => {
                app.sign_in_audience = audience.to_owned();
                true
            }
            None => false,
        }
    }

    /// Sets `endDateTime` of every secret of the app (Graph reports it; Entra ID refuses a
    /// secret past it with AADSTS7000222). False if the app is unknown.
    pub fn set_secret_end(&self, client_id: &str, end: DateTime<Utc>) -> bool {
        let mut world = self.shared.world();
        match world.dir.app_by_client_id_mut(client_id) {
            Some(app) => {
                for credential in &mut app.password_credentials {
                    credential.end = end;
                    if credential.start >= end {
                        credential.start = end - chrono::Duration::days(1);
                    }
                }
                true
            }
            None => false,
        }
    }

    /// Misconfiguration knob: makes every secret of the app expired (AADSTS7000222).
    pub fn expire_secrets(&self, client_id: &str) -> bool {
        self.shared.world().dir.expire_secrets(client_id)
    }

    /// Misconfiguration knob: sets `api.requestedAccessTokenVersion` (2 makes the app's access
    /// tokens v2, so an inbound app breaks the OIDC `appid` claim).
    pub fn set_requested_access_token_version(
        &self,
        client_id: &str,
        version: Option<i64>,
    ) -> bool {
        self.shared
            .world()
            .dir
            .set_token_version(client_id, version)
    }

    /// The user the authorize endpoint signs in without a UI.
    pub fn set_signed_in_user(&self, user: SignedInUser) {
        self.shared.world().dir.authorize_outcome = AuthorizeOutcome::SignIn(user);
    }

    /// Rewrites every ID token the token endpoint issues from now on (`None`: issue them as
    /// Entra ID does). Tests use it to hand the bot forged or misdirected tokens.
    pub fn set_id_token_rewrite(&self, rewrite: Option<entra::IdTokenRewrite>) {
        self.shared.world().dir.id_token_rewrite = rewrite;
    }

    /// What the authorize endpoint does next: sign in a user or let the user cancel.
    pub fn set_authorize_outcome(&self, outcome: AuthorizeOutcome) {
        self.shared.world().dir.authorize_outcome = outcome;
    }

    /// Assigns a built-in directory role (by template id, e.g. Global Administrator
    /// `62e90394-69f5-4237-9190-012177145e10`) to the user `oid`, tenant-wide; returns the
    /// assignment id. Assigning it twice keeps one assignment.
    pub fn assign_directory_role(&self, oid: &str, role_template_id: &str) -> String {
        let assignment = DirectoryRoleAssignment::new(oid, role_template_id);
        let mut world = self.shared.world();
        let assignments = &mut world.dir.role_assignments;
        if !assignments.iter().any(|a| a.id == assignment.id) {
            assignments.push(assignment.clone());
        }
        assignment.id
    }

    /// Removes the assignment of a directory role from `oid`; false if it had none.
    pub fn unassign_directory_role(&self, oid: &str, role_template_id: &str) -> bool {
        let id = DirectoryRoleAssignment::new(oid, role_template_id).id;
        let mut world = self.shared.world();
        let before = world.dir.role_assignments.len();
        world.dir.role_assignments.retain(|a| a.id != id);
        world.dir.role_assignments.len() != before
    }

    /// The directory role assignments of `oid`.
    pub fn directory_roles(&self, oid: &str) -> Vec<DirectoryRoleAssignment> {
        self.shared
            .world()
            .dir
            .role_assignments
            .iter()
            .filter(|a| a.principal_id.eq_ignore_ascii_case(oid))
            .cloned()
            .collect()
    }

    /// Misconfiguration knob: Graph answers 403 `Authorization_RequestDenied` to role
    /// assignment reads, as for an app without `RoleManagement.Read.Directory`.
    pub fn set_directory_role_reads_denied(&self, denied: bool) {
        self.shared.world().dir.role_reads_denied = denied;
    }

    /// Object id of the user the authorize endpoint signs in by default (the Agents
    /// Playground's default user; a Global Administrator).
    pub fn default_signed_in_oid(&self) -> &'static str {
        entra::SEED_USER_OID
    }

    // ---- Graph service health ----

    /// All service-health issues.
    pub fn service_health_issues(&self) -> Vec<ServiceHealthIssue> {
        self.shared.world().health.issues.clone()
    }

    /// Adds a service-health issue (its `lastModifiedDateTime` is set to now).
    pub fn add_service_health_issue(&self, issue: ServiceHealthIssue) {
        self.shared.world().health.add(issue);
    }

    /// Moves an issue along: a new post, a status change, resolution. `lastModifiedDateTime`
    /// becomes now. False if no issue has that id.
    pub fn advance_issue(&self, id: &str, advance: IssueAdvance) -> bool {
        self.shared.world().health.advance(id, advance)
    }

    /// Misconfiguration knob: Graph answers 403 `Authorization_RequestDenied` to writes
    /// (application and service-principal creation or change), as for an app without
    /// `Application.ReadWrite.*`.
    pub fn set_graph_writes_denied(&self, denied: bool) {
        self.shared.world().dir.graph_writes_denied = denied;
    }
}

// ---- small shared helpers ----

/// A random GUID in the 8-4-4-4-12 form (version 4 bits set).
pub(crate) fn new_guid() -> String {
    let mut bytes: [u8; 16] = rand::rng().random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// A random ServiceNow sys_id: 32 lowercase hex digits.
pub(crate) fn new_sys_id() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random token of `len` characters from `[A-Za-z0-9_-]`.
pub(crate) fn random_token(len: usize) -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(CHARS[rng.random_range(0..CHARS.len())]))
        .collect()
}

/// Now, UTC.
pub(crate) fn now() -> DateTime<Utc> {
    Utc::now()
}

/// ServiceNow's `YYYY-MM-DD HH:MM:SS` (UTC).
pub(crate) fn sn_datetime(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// Graph's ISO 8601 with fractional seconds and `Z`.
pub(crate) fn iso_datetime(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Decoded query parameters in order (later duplicates kept).
pub(crate) fn query_pairs(uri: &axum::http::Uri) -> Vec<(String, String)> {
    uri.query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// The first value of query parameter `name`.
pub(crate) fn query_param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_the_real_shapes() {
        let guid = new_guid();
        assert!(crate::ids::is_guid(&guid), "{guid}");
        let sys_id = new_sys_id();
        assert_eq!(sys_id.len(), 32);
        assert!(
            sys_id
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(random_token(40).len(), 40);
    }
}
