//! Tenants: which tenant a request belongs to, and each tenant's ingester, query engine, routes and
//! background tasks.
//!
//! Without `--multi-tenant` or `--auth-config` there is one tenant, `default`, opened at start, and
//! its routes are served as they are. With `--multi-tenant`, every request names its tenant in the
//! `X-Scope-OrgID` header (gRPC metadata `x-scope-orgid`), as Tempo, Mimir and Loki expect; with
//! `--auth-config`, every request presents a token, whose tenant it is ([`crate::auth`]). A tenant
//! is opened the first time a request names it (and at start, when the data directory holds its data), and the request is
//! handed to that tenant's routes. A tenant's span files, derived tables, manifest, write-ahead log
//! and dead letters are its own (see `hopscope_schemas::layout`), its queries see only its tables,
//! and its buffer has a `--max-buffered-bytes` of its own, so that one tenant's flood is refused
//! without slowing another. Queries of all tenants share the query threads and memory pool, each
//! tenant with its own `--query-max-concurrent` turns.
//!
//! A browser cannot send `X-Scope-OrgID` when it follows a link, so the UI's pages also take the
//! tenant from the URL (`tenant=`, taken out before the page sees its parameters); a page whose URL
//! names none gets the tenant picker (without tokens: a token names its tenant), and a page never
//! opens a tenant the server does not hold (a typo is no new tenant).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use hopscope_ingest::limits::TenantLimits;
use hopscope_ingest::{IngestError, Ingester, IngesterConfig};
use hopscope_query::QueryEngine;
use hopscope_schemas::layout;
use prometheus_client::registry::Registry;
use tokio::sync::{OnceCell, RwLock};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::auth::{AuthConfig, Scope};
use crate::limits::LimitsConfig;

/// The header (and gRPC metadata key) that names a request's tenant.
pub(crate) const TENANT_HEADER: &str = "x-scope-orgid";

/// Whether requests name their tenant.
#[derive(Debug, Clone, Copy)]
pub(crate) enum TenantMode {
    /// Everything belongs to the default tenant; `X-Scope-OrgID` is ignored.
    Single,
    /// Every request names its tenant (by its token when tokens are required); at most
    /// `max_tenants` are opened (those already in the data directory at start are opened whatever
    /// their number).
    Multi { max_tenants: usize },
}

impl TenantMode {
    /// How the listening line says it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            TenantMode::Single => "single",
            TenantMode::Multi { .. } => "multi (X-Scope-OrgID)",
        }
    }
}

/// What every tenant is opened with.
pub(crate) struct TenantSettings {
    /// The ingester's configuration, its tenant replaced by each tenant's.
    pub(crate) ingest: IngesterConfig,
    /// The query engine whose threads, memory pool and metrics every tenant's engine shares; it is
    /// the default tenant's own.
    pub(crate) engine: Arc<QueryEngine>,
    pub(crate) otlp_http_max_body_bytes: usize,
    pub(crate) otlp_grpc_max_message_bytes: usize,
    pub(crate) ui: hopscope_ui::UiConfig,
    /// Whether the API address answers queries (the API, the UI); not on an ingester
    /// (`--role ingester`), which serves only its dead-letter routes there.
    pub(crate) answers_queries: bool,
}

/// The listeners' kinds of routes, each of which every tenant has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Surface {
    /// The HTTP API, the UI and the dead-letter routes (the API address and `--jaeger-addr`).
    Api,
    /// OTLP/HTTP and Zipkin's receiver (also on `--zipkin-addr`).
    OtlpHttp,
    /// OTLP/gRPC.
    OtlpGrpc,
}

/// One open tenant.
struct Tenant {
    /// `None` on a querier, which stores nothing.
    ingester: Option<Arc<Ingester>>,
    api: Router,
    otlp_http: Router,
    otlp_grpc: Router,
}

impl Tenant {
    fn routes(&self, surface: Surface) -> Router {
        match surface {
            Surface::Api => self.api.clone(),
            Surface::OtlpHttp => self.otlp_http.clone(),
            Surface::OtlpGrpc => self.otlp_grpc.clone(),
        }
    }
}

/// A tenant's background tasks, awaited at shutdown.
struct TenantTasks {
    tenant: String,
    flusher: JoinHandle<Result<(), IngestError>>,
    maintenance: JoinHandle<()>,
}

/// The open tenants of a server, and the tenants it may still open.
pub(crate) struct Tenants {
    mode: TenantMode,
    /// The tokens, when `--auth-config` requires them (read again on SIGHUP).
    auth: Mutex<Option<Arc<AuthConfig>>>,
    /// Limits that differ by tenant (`--tenant-limits`, read again on SIGHUP).
    limits: Mutex<Option<Arc<LimitsConfig>>>,
    settings: TenantSettings,
    /// The data directory's lock; `None` on a querier (`--role querier`), whose tenants have no
    /// ingester and which keeps nothing in a data directory.
    lock: Option<Arc<std::fs::File>>,
    registry: Arc<Mutex<Registry>>,
    opened: Mutex<HashMap<String, Arc<OnceCell<Arc<Tenant>>>>>,
    tasks: Mutex<Vec<TenantTasks>>,
    /// `true` once shut down; opening a tenant holds it for reading, so that shutting down waits for
    /// opens in progress and then sees every tenant's tasks.
    closed: Arc<RwLock<bool>>,
    /// Stops the maintenance tasks (with the receivers).
    stop: CancellationToken,
    /// Stops the flushers, once the receivers have drained.
    flush_stop: CancellationToken,
}

impl Tenants {
    /// Opens the tenants whose data the data directory (whose `lock` the caller took) holds: the
    /// default tenant always in single-tenant mode, every tenant with a manifest or a write-ahead
    /// log in multi-tenant mode (so that what they were sent before a restart is written).
    pub(crate) async fn open(
        mode: TenantMode,
        auth: Option<AuthConfig>,
        limits: Option<LimitsConfig>,
        settings: TenantSettings,
        lock: Option<std::fs::File>,
        registry: Arc<Mutex<Registry>>,
        stop: CancellationToken,
    ) -> anyhow::Result<Arc<Self>> {
        let data_dir = settings.ingest.data_dir.clone();
        let existing = match lock {
            Some(_) => tokio::task::spawn_blocking(move || stored_tenants(&data_dir)).await??,
            // A querier opens each tenant on its first request.
            None => Vec::new(),
        };
        let tenants = Arc::new(Self {
            mode,
            auth: Mutex::new(auth.map(Arc::new)),
            limits: Mutex::new(limits.map(Arc::new)),
            settings,
            lock: lock.map(Arc::new),
            registry,
            opened: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
            closed: Arc::new(RwLock::new(false)),
            stop,
            flush_stop: CancellationToken::new(),
        });
        let at_start = match mode {
            TenantMode::Single => vec![layout::DEFAULT_TENANT.to_owned()],
            TenantMode::Multi { .. } => existing,
        };
        for tenant in at_start {
            tenants.tenant(&tenant, true).await?;
        }
        Ok(tenants)
    }

    /// The routes a listener serves for `surface`: the default tenant's own in single-tenant mode;
    /// in multi-tenant mode, routes that hand each request to its tenant's.
    pub(crate) async fn routes(self: &Arc<Self>, surface: Surface) -> anyhow::Result<Router> {
        Ok(match self.mode {
            TenantMode::Single => self.tenant(layout::DEFAULT_TENANT, true).await?.routes(surface),
            TenantMode::Multi { .. } => Router::new().fallback(dispatch).with_state((Arc::clone(self), surface)),
        })
    }

    /// Reads the auth file again (SIGHUP): the new tokens apply to the next request; a file that
    /// does not load leaves the tokens as they were, and says why.
    pub(crate) async fn reload_auth(&self) {
        let Some(path) = self.auth.lock().expect("auth lock").as_ref().map(|a| a.path().to_owned()) else { return };
        match tokio::task::spawn_blocking(move || AuthConfig::load(&path)).await {
            Ok(Ok(auth)) => {
                tracing::info!(path = %auth.path().display(), tokens = auth.tokens(), "auth file reloaded");
                *self.auth.lock().expect("auth lock") = Some(Arc::new(auth));
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "the auth file was not reloaded; the tokens read before still apply")
            }
            Err(e) => tracing::error!(error = %e, "reloading the auth file failed"),
        }
    }

    /// Whether requests must present tokens.
    pub(crate) fn requires_tokens(&self) -> bool {
        self.auth.lock().expect("auth lock").is_some()
    }

    /// Checks that a request to `/metrics` presents a token with the `admin` scope, when tokens are
    /// required.
    pub(crate) fn may_read_metrics(&self, headers: &http::HeaderMap) -> Result<(), IngestError> {
        match self.auth.lock().expect("auth lock").clone() {
            Some(auth) => auth.authorize(headers, Scope::Admin).map(drop),
            None => Ok(()),
        }
    }

    /// The tenant a request belongs to, checked: its token's when tokens are required (with the
    /// scope `surface` and `path` need), else the one `X-Scope-OrgID` names.
    /// `in_url`: the tenant a page's URL names, which must agree with the header when both do.
    fn tenant_of(
        &self,
        headers: &http::HeaderMap,
        in_url: Option<String>,
        surface: Surface,
        path: &str,
    ) -> Result<String, IngestError> {
        if let TenantMode::Single = self.mode {
            return Ok(layout::DEFAULT_TENANT.to_owned());
        }
        let named = match (headers.get(TENANT_HEADER).map(named_tenant).transpose()?, in_url) {
            (Some(header), Some(url)) if header != url => {
                return Err(IngestError::BadTenant(format!(
                    "X-Scope-OrgID names tenant {header:?}, but the URL names {url:?} (tenant=)"
                )));
            }
            (header, url) => header.or(url),
        };
        let auth = self.auth.lock().expect("auth lock").clone();
        if let Some(auth) = auth {
            let tenant = auth.authorize(headers, scope_of(surface, path))?;
            return match named {
                Some(named) if named != tenant => Err(IngestError::Forbidden(format!(
                    "X-Scope-OrgID names tenant {named:?}, but the token is tenant {tenant:?}'s"
                ))),
                _ => Ok(tenant.to_owned()),
            };
        }
        named.ok_or_else(|| {
            IngestError::Unauthenticated(
                "no tenant named: this server keeps tenants apart (--multi-tenant), so every request names its tenant \
                 in the X-Scope-OrgID header (gRPC metadata x-scope-orgid)"
                    .to_owned(),
            )
        })
    }

    /// The open tenant `id`, opened now if it is not (`existing`: its data is in the data
    /// directory, and the tenant bound does not apply). The opening runs in a task of its own, so
    /// that a client that goes away cannot cancel it halfway (and leave an ingester being opened
    /// beside the next attempt's).
    async fn tenant(self: &Arc<Self>, id: &str, existing: bool) -> Result<Arc<Tenant>, IngestError> {
        let closed = Arc::clone(&self.closed).read_owned().await;
        if *closed {
            return Err(IngestError::ShuttingDown);
        }
        let cell = {
            let mut opened = self.opened.lock().expect("tenants lock");
            match opened.get(id) {
                Some(cell) if cell.initialized() => return Ok(Arc::clone(cell.get().expect("initialized"))),
                Some(cell) => Arc::clone(cell),
                None => {
                    if let TenantMode::Multi { max_tenants } = self.mode
                        && !existing
                        && opened.len() >= max_tenants
                    {
                        return Err(IngestError::Forbidden(format!(
                            "tenant {id:?} is new, and this server already holds its limit of {max_tenants} tenants \
                             (--max-tenants)"
                        )));
                    }
                    Arc::clone(opened.entry(id.to_owned()).or_default())
                }
            }
        };
        let (tenants, id) = (Arc::clone(self), id.to_owned());
        tokio::spawn(async move {
            // Shutting down waits for this guard: every opened tenant's tasks are then listed.
            let _closed = closed;
            let opening = cell.get_or_try_init(|| tenants.open_tenant(&id)).await.cloned();
            if opening.is_err() {
                // Tried again by the next request; it holds no place under the bound meanwhile.
                let mut opened = tenants.opened.lock().expect("tenants lock");
                if opened.get(&id).is_some_and(|c| !c.initialized()) {
                    opened.remove(&id);
                }
            }
            opening
        })
        .await
        .map_err(|e| IngestError::Task(format!("opening a tenant: {e}")))?
    }

    /// The tenants a page may show, sorted: those open, and on a querier those in the store too
    /// (a store that cannot be listed now leaves them out, and says why in the log).
    async fn known(&self) -> Vec<String> {
        let mut known: Vec<String> = self.opened.lock().expect("tenants lock").keys().cloned().collect();
        if let (None, Some(storage)) = (&self.lock, &self.settings.ingest.storage) {
            let storage = Arc::clone(storage);
            match tokio::task::spawn_blocking(move || storage.list_dirs("")).await {
                Ok(Ok(stored)) => known.extend(stored.into_iter().filter(|t| layout::validate_tenant(t).is_ok())),
                Ok(Err(e)) => tracing::warn!(error = %e, "listing the tenants in the store failed"),
                Err(e) => tracing::warn!(error = %e, "listing the tenants in the store failed"),
            }
        }
        known.sort_unstable();
        known.dedup();
        known
    }

    /// `tenant`'s limits now: the flags', with `--tenant-limits` over them.
    fn limits_of(&self, tenant: &str) -> TenantLimits {
        let base = self.settings.ingest.tenant_limits;
        match self.limits.lock().expect("limits lock").as_ref() {
            Some(limits) => limits.limits_for(tenant, &base),
            None => base,
        }
    }

    /// Reads `--tenant-limits` again (SIGHUP) and applies it to every open tenant; a file that does
    /// not load leaves the limits as they were, and says why.
    pub(crate) async fn reload_limits(&self) {
        let Some(path) = self.limits.lock().expect("limits lock").as_ref().map(|l| l.path().to_owned()) else { return };
        match tokio::task::spawn_blocking(move || LimitsConfig::load(&path)).await {
            Ok(Ok(limits)) => {
                tracing::info!(path = %limits.path().display(), "tenant limits reloaded");
                *self.limits.lock().expect("limits lock") = Some(Arc::new(limits));
                let open: Vec<(String, Arc<Tenant>)> = {
                    let opened = self.opened.lock().expect("tenants lock");
                    opened.iter().filter_map(|(id, cell)| cell.get().map(|t| (id.clone(), Arc::clone(t)))).collect()
                };
                for (id, tenant) in open {
                    if let Some(ingester) = &tenant.ingester {
                        ingester.set_limits(&self.limits_of(&id));
                    }
                }
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "the tenant limits were not reloaded; the limits read before still apply")
            }
            Err(e) => tracing::error!(error = %e, "reloading the tenant limits failed"),
        }
    }

    /// Opens tenant `id`: everything that can fail comes before its ingester is opened, so that a
    /// tenant whose opening failed has no ingester (and no tasks) left behind to clash with the
    /// next attempt's.
    async fn open_tenant(&self, id: &str) -> Result<Arc<Tenant>, IngestError> {
        let engine = if id == layout::DEFAULT_TENANT {
            Arc::clone(&self.settings.engine)
        } else {
            Arc::new(
                self.settings
                    .engine
                    .for_tenant(id)
                    .map_err(|e| IngestError::Task(format!("the query engine of tenant {id:?}: {e}")))?,
            )
        };
        let settings = &self.settings;
        let ui = hopscope_ui::UiConfig {
            tenant: matches!(self.mode, TenantMode::Multi { .. }).then(|| id.to_owned()),
            ..settings.ui.clone()
        };
        let api = match settings.answers_queries {
            true => Router::new()
                .merge(hopscope_query::api::router(Arc::clone(&engine)))
                .merge(hopscope_ui::router(engine, ui)),
            false => Router::new().fallback(no_queries_here),
        };
        let Some(lock) = &self.lock else {
            // A querier: the query API and the UI, nothing to receive or store.
            if let TenantMode::Multi { .. } = self.mode {
                tracing::info!(tenant = id, "tenant opened (queries only)");
            }
            return Ok(Arc::new(Tenant { ingester: None, api, otlp_http: Router::new(), otlp_grpc: Router::new() }));
        };
        let config =
            IngesterConfig { tenant: id.to_owned(), tenant_limits: self.limits_of(id), ..self.settings.ingest.clone() };
        let lock = Arc::clone(lock);
        let ingester = tokio::task::spawn_blocking(move || Ingester::open_locked(config, lock))
            .await
            .map_err(|e| IngestError::Task(e.to_string()))??;
        {
            let mut registry = self.registry.lock().expect("metrics registry lock");
            match self.mode {
                TenantMode::Single => ingester.metrics().register(&mut registry),
                TenantMode::Multi { .. } => ingester
                    .metrics()
                    .register(registry.sub_registry_with_label((Cow::Borrowed("tenant"), Cow::Owned(id.to_owned())))),
            }
        }
        self.tasks.lock().expect("tenant tasks lock").push(TenantTasks {
            tenant: id.to_owned(),
            flusher: supervise_flusher(&ingester, self.flush_stop.clone()),
            maintenance: supervise_maintenance(&ingester, self.stop.clone()),
        });
        let api = api.merge(hopscope_ingest::admin::router(Arc::clone(&ingester)));
        let grpc = hopscope_ingest::grpc::TraceService::new(ingester.clone(), settings.otlp_grpc_max_message_bytes);
        if let TenantMode::Multi { .. } = self.mode {
            tracing::info!(tenant = id, "tenant opened");
        }
        Ok(Arc::new(Tenant {
            otlp_http: hopscope_ingest::http::router(ingester.clone(), settings.otlp_http_max_body_bytes),
            otlp_grpc: hopscope_ingest::grpc::router(grpc),
            ingester: Some(ingester),
            api,
        }))
    }

    /// Once the receivers have drained: opens no more tenants, lets every tenant's maintenance
    /// finish, then writes every tenant's buffered spans. The first failure to write is returned,
    /// after every flusher has ended.
    pub(crate) async fn shut_down(&self) -> anyhow::Result<()> {
        *self.closed.write().await = true;
        self.stop.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock().expect("tenant tasks lock"));
        let mut flushers = Vec::with_capacity(tasks.len());
        for task in tasks {
            // The merge in progress finishes (or is left uncommitted, removed at the next start).
            task.maintenance.await?;
            flushers.push((task.tenant, task.flusher));
        }
        self.flush_stop.cancel();
        let mut failed = None;
        for (tenant, flusher) in flushers {
            if let Err(e) = flusher.await? {
                tracing::error!(tenant, error = %e, "writing buffered spans at shutdown failed");
                failed.get_or_insert(
                    anyhow::Error::new(e).context(format!("writing tenant {tenant:?}'s buffered spans")),
                );
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

/// The tenant an `X-Scope-OrgID` value names, checked.
fn named_tenant(value: &http::HeaderValue) -> Result<String, IngestError> {
    let tenant = value
        .to_str()
        .map_err(|_| {
            IngestError::BadTenant("X-Scope-OrgID: a tenant id is ASCII letters, digits, '-', '_' and '.'".to_owned())
        })?
        .trim();
    layout::validate_tenant(tenant).map_err(|e| IngestError::BadTenant(format!("X-Scope-OrgID: {e}")))?;
    Ok(tenant.to_owned())
}

/// The scope a request needs: `write` to send spans (Zipkin's receiver on `--zipkin-addr` is
/// routed as OTLP/HTTP), `admin` for the dead letters, `read` for the rest of the API and the UI.
fn scope_of(surface: Surface, path: &str) -> Scope {
    match surface {
        Surface::OtlpHttp | Surface::OtlpGrpc => Scope::Write,
        Surface::Api if path.starts_with(hopscope_ingest::admin::DEAD_LETTERS_PATH) => Scope::Admin,
        Surface::Api => Scope::Read,
    }
}

/// Hands a request to its tenant's routes, or refuses it in the shape its surface answers errors.
/// The UI's pages are the browser's: see [`page_tenant`].
async fn dispatch(State((tenants, surface)): State<(Arc<Tenants>, Surface)>, mut request: Request) -> Response {
    let path = request.uri().path();
    let tenant = if surface == Surface::Api && path.starts_with(hopscope_ui::ASSETS) {
        return serve(hopscope_ui::assets(), request).await;
    } else if surface == Surface::Api && is_page(path) {
        match page_tenant(&tenants, &mut request).await {
            Ok(tenant) => Ok(tenant),
            Err(picker) => return picker,
        }
    } else {
        match tenants.tenant_of(request.headers(), None, surface, path) {
            Ok(id) => tenants.tenant(&id, false).await,
            Err(e) => Err(e),
        }
    };
    match tenant {
        Ok(tenant) => serve(tenant.routes(surface), request).await,
        Err(e) => match surface {
            Surface::OtlpGrpc => hopscope_ingest::grpc::refusal(&e),
            Surface::OtlpHttp => hopscope_ingest::http::refusal(&e, request.headers()),
            Surface::Api => api_refusal(&e, tenants.requires_tokens()),
        },
    }
}

async fn serve(routes: Router, request: Request) -> Response {
    match routes.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// Whether `path` is one of the UI's pages (`/` redirects to one).
fn is_page(path: &str) -> bool {
    path == "/" || path == "/ui" || path.starts_with("/ui/")
}

/// The tenant whose page a browser asks for: the one its token names, else the one `tenant=` in
/// the URL (taken out of it) or `X-Scope-OrgID` names, if the server holds it. Else the answer is
/// the tenant picker (or, with tokens, the refusal that makes a browser ask for one). The picker
/// itself (`/ui/tenants`) is answered here too.
async fn page_tenant(tenants: &Arc<Tenants>, request: &mut Request) -> Result<Arc<Tenant>, Response> {
    let tokens = tenants.requires_tokens();
    let named = take_tenant_param(request);
    let path = request.uri().path();
    let tenant = named.and_then(|in_url| tenants.tenant_of(request.headers(), in_url, Surface::Api, path));
    // A tenant open already is served without asking the store (a querier lists it otherwise).
    if let Ok(id) = &tenant
        && path != hopscope_ui::TENANTS
        && tenants.opened.lock().expect("tenants lock").contains_key(id)
    {
        return tenants.tenant(id, false).await.map_err(|e| api_refusal(&e, tokens));
    }
    let picker = hopscope_ui::tenant_picker;
    match tenant {
        Ok(id) if path == hopscope_ui::TENANTS => {
            let choices = if tokens { vec![id.clone()] } else { tenants.known().await };
            Err(picker(http::StatusCode::OK, &choices, Some(&id), None, !tokens))
        }
        Ok(id) if tokens => tenants.tenant(&id, false).await.map_err(|e| api_refusal(&e, tokens)),
        Ok(id) => {
            // Not open yet: a page opens only a tenant with data (a querier's, in the store).
            let known = tenants.known().await;
            if known.contains(&id) {
                return tenants.tenant(&id, false).await.map_err(|e| api_refusal(&e, tokens));
            }
            let problem = format!("This server holds no tenant {id:?}: no span has been sent to it.");
            Err(picker(http::StatusCode::NOT_FOUND, &known, None, Some(&problem), true))
        }
        Err(IngestError::Unauthenticated(_)) if !tokens => {
            Err(picker(http::StatusCode::OK, &tenants.known().await, None, None, true))
        }
        Err(e @ IngestError::BadTenant(_)) if !tokens => {
            Err(picker(http::StatusCode::BAD_REQUEST, &tenants.known().await, None, Some(&e.to_string()), true))
        }
        Err(e) => Err(api_refusal(&e, tokens)),
    }
}

/// Takes `tenant=` out of a page's URL (a page does not take it as a parameter of its own) and
/// returns the tenant it names (`None`: none, or empty), checked.
fn take_tenant_param(request: &mut Request) -> Result<Option<String>, IngestError> {
    let Some(query) = request.uri().query() else { return Ok(None) };
    let param = hopscope_ui::TENANT_PARAM;
    let mut named: Option<String> = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match form_urlencoded::parse(pair.as_bytes()).next() {
            Some((key, value)) if key == param => {
                let value = value.trim();
                if named.as_deref().is_some_and(|n| n != value) {
                    return Err(IngestError::BadTenant(format!("{param}: named twice, as {named:?} and {value:?}")));
                }
                named = Some(value.to_owned());
            }
            _ => kept.push(pair),
        }
    }
    if named.is_none() {
        return Ok(None);
    }
    let path = request.uri().path();
    let rewritten = if kept.is_empty() { path.to_owned() } else { format!("{path}?{}", kept.join("&")) };
    let mut parts = request.uri().clone().into_parts();
    parts.path_and_query = Some(
        rewritten
            .parse()
            .map_err(|e| IngestError::BadTenant(format!("{param}: the URL cannot be kept without it: {e}")))?,
    );
    *request.uri_mut() = http::Uri::from_parts(parts)
        .map_err(|e| IngestError::BadTenant(format!("{param}: the URL cannot be kept without it: {e}")))?;
    match named.filter(|n| !n.is_empty()) {
        Some(tenant) => {
            layout::validate_tenant(&tenant).map_err(|e| IngestError::BadTenant(format!("{param}: {e}")))?;
            Ok(Some(tenant))
        }
        None => Ok(None),
    }
}

/// Any query on an ingester (`--role ingester`): 404, saying where queries are answered.
async fn no_queries_here() -> Response {
    let error = "this is an ingester (--role ingester): it stores spans and answers no queries; ask a --role querier";
    (http::StatusCode::NOT_FOUND, axum::Json(hopscope_schemas::api::ErrorBody { error: error.to_owned() }))
        .into_response()
}

/// A request to the API address refused for who sent it: `{"error": ...}`, and when tokens are
/// required, a 401 asks for basic auth, so that a browser opening the UI prompts for the token
/// (as the password).
pub(crate) fn api_refusal(e: &IngestError, tokens: bool) -> Response {
    let mut response =
        (e.http_status(), axum::Json(hopscope_schemas::api::ErrorBody { error: e.to_string() })).into_response();
    if tokens && response.status() == http::StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Basic realm=\"hopscope\", charset=\"UTF-8\""),
        );
    }
    response
}

/// The tenants whose data the data directory holds: directories named as tenants with a manifest or
/// a write-ahead log, and the default tenant when its log (at the top) exists.
fn stored_tenants(data_dir: &std::path::Path) -> Result<Vec<String>, IngestError> {
    let mut tenants = Vec::new();
    if data_dir.join(layout::WAL_DIR).is_dir() {
        tenants.push(layout::DEFAULT_TENANT.to_owned());
    }
    let entries = std::fs::read_dir(data_dir).map_err(IngestError::io(format!("listing {}", data_dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(IngestError::io(format!("listing {}", data_dir.display())))?;
        let (Ok(name), path) = (entry.file_name().into_string(), entry.path()) else { continue };
        let holds_data = path.join("manifest.json").is_file() || path.join(layout::WAL_DIR).is_dir();
        if layout::validate_tenant(&name).is_ok() && holds_data && !tenants.contains(&name) {
            tenants.push(name);
        }
    }
    tenants.sort();
    Ok(tenants)
}

/// How long a failed maintenance task waits before it is started again.
const MAINTENANCE_RESTART_DELAY: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs the maintenance task (compaction, retention), starting it again if it fails unexpectedly,
/// until `stop` is cancelled.
fn supervise_maintenance(ingester: &Arc<Ingester>, stop: CancellationToken) -> JoinHandle<()> {
    let ingester = Arc::clone(ingester);
    tokio::spawn(async move {
        loop {
            match ingester.spawn_maintenance(stop.clone()).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::error!(error = %e, "the maintenance task failed; starting it again");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(MAINTENANCE_RESTART_DELAY) => {}
                    }
                }
            }
        }
    })
}

/// Runs the flusher. If it fails unexpectedly, what it was writing may be half done, so the
/// process stops at once, loudly: every acknowledged span is in the write-ahead log, and the next
/// start writes it.
fn supervise_flusher(ingester: &Arc<Ingester>, stop: CancellationToken) -> JoinHandle<Result<(), IngestError>> {
    let flusher = ingester.spawn_flusher(stop);
    tokio::spawn(async move {
        match flusher.await {
            Ok(result) => result,
            Err(e) => {
                tracing::error!(error = %e, "the flusher failed; stopping so that the next start replays the write-ahead log");
                crate::eprintln_lossy(&format!("hopscope: the flusher failed ({e}); exiting"));
                std::process::exit(70);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(uri: &str) -> (Result<Option<String>, String>, String) {
        let mut request = Request::builder().uri(uri).body(axum::body::Body::empty()).unwrap();
        let named = take_tenant_param(&mut request).map_err(|e| e.to_string());
        (named, request.uri().to_string())
    }

    #[test]
    fn a_pages_tenant_is_taken_out_of_its_url_and_the_rest_kept_in_order() {
        assert_eq!(
            take("/ui/graph?range=1h&tenant=team-a&color=p99"),
            (Ok(Some("team-a".into())), "/ui/graph?range=1h&color=p99".into())
        );
        assert_eq!(take("/ui/graph?tenant=team-a"), (Ok(Some("team-a".into())), "/ui/graph".into()));
        assert_eq!(take("/ui/graph?tenant=&range=1h"), (Ok(None), "/ui/graph?range=1h".into()));
        assert_eq!(take("/ui/graph?range=1h"), (Ok(None), "/ui/graph?range=1h".into()));
        assert_eq!(take("/ui/graph?tenant=a&tenant=a"), (Ok(Some("a".into())), "/ui/graph".into()));
        let (named, _) = take("/ui/graph?tenant=a&tenant=b");
        assert!(named.unwrap_err().contains("named twice"));
        let (named, _) = take("/ui/graph?tenant=%2E%2E");
        assert!(named.unwrap_err().starts_with("tenant:"));
    }
}
