//! Prometheus metrics, recorded at the decision pipeline's choke points
//! (`Inner::decide`, `Inner::record`, `Inner::record_report`, the stream
//! loop and the reload loop) and served with `/healthz` and `/readyz` on
//! their own listener (`--metrics-listen`).

use std::sync::Arc;
use std::time::Duration;

use audit_store::AuditStore;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    verdict: &'static str,
    decided_by: &'static str,
    reason_code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BundleLabels {
    hash: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReportLabels {
    decided_by: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabels {
    policy: String,
}

/// The server's metrics. Cheap to share; every method is lock-free or
/// takes a short per-family lock.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    decisions: Family<DecisionLabels, Counter>,
    denying_policies: Family<PolicyLabels, Counter>,
    decision_seconds: Histogram,
    audit_append_seconds: Histogram,
    audit_append_failures: Counter,
    audit_ready: Gauge,
    open_streams: Gauge,
    fail_open: Counter,
    reloads: Family<ResultLabels, Counter>,
    bundle: Family<BundleLabels, Gauge>,
    reports: Family<ReportLabels, Counter>,
}

/// 50 µs to about 1.6 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("gatehouse");
        let m = Self {
            decisions: Family::default(),
            denying_policies: Family::default(),
            decision_seconds: latency_histogram(),
            audit_append_seconds: latency_histogram(),
            audit_append_failures: Counter::default(),
            audit_ready: Gauge::default(),
            open_streams: Gauge::default(),
            fail_open: Counter::default(),
            reloads: Family::default(),
            bundle: Family::default(),
            reports: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "decisions",
            "Decisions sent or reported, by verdict, who decided and reason code",
            m.decisions.clone(),
        );
        registry.register(
            "denying_policies",
            "Deny and ask decisions, by each policy that contributed",
            m.denying_policies.clone(),
        );
        registry.register(
            "decision_duration_seconds",
            "Time from an event's arrival to its decision being ready to send (audit included)",
            m.decision_seconds.clone(),
        );
        registry.register(
            "audit_append_duration_seconds",
            "Time for one audit record to commit",
            m.audit_append_seconds.clone(),
        );
        registry.register(
            "audit_append_failures",
            "Audit appends that failed or missed the audit deadline",
            m.audit_append_failures.clone(),
        );
        registry.register(
            "audit_ready",
            "1 while the audit can commit, else 0",
            m.audit_ready.clone(),
        );
        registry.register("open_streams", "Open event streams", m.open_streams.clone());
        registry.register(
            "fail_open_decisions",
            "Decisions clients made fail-open and reported (flagged fail_open in the audit)",
            m.fail_open.clone(),
        );
        registry.register(
            "bundle_reloads",
            "Policy bundle reloads by result (ok, rejected)",
            m.reloads.clone(),
        );
        registry.register(
            "bundle_info",
            "The active policy bundle (value 1), labelled by its hash",
            m.bundle.clone(),
        );
        registry.register(
            "local_decision_reports",
            "Local-decision reports received from clients, by who decided",
            m.reports.clone(),
        );
        // Families with a known label set are exported from the start, at
        // zero, so that dashboards and alerts see them before the first
        // event.
        for result in ["ok", "rejected"] {
            m.reloads.get_or_create(&ResultLabels { result }).inc_by(0);
        }
        for by in ["local_fallback", "fail_open", "fail_closed"] {
            m.reports
                .get_or_create(&ReportLabels { decided_by: by })
                .inc_by(0);
        }
        Self { registry, ..m }
    }

    /// One decision sent by the server.
    pub(crate) fn decision(&self, d: &policy_core::Decision, elapsed: Duration) {
        self.decisions
            .get_or_create(&DecisionLabels {
                verdict: d.verdict.as_str(),
                decided_by: "server",
                reason_code: d.reason_code.as_str(),
            })
            .inc();
        if d.verdict != policy_core::Verdict::Allow {
            for p in &d.policies {
                self.denying_policies
                    .get_or_create(&PolicyLabels { policy: p.clone() })
                    .inc();
            }
        }
        self.decision_seconds.observe(elapsed.as_secs_f64());
    }

    /// One local decision reported by a client and recorded. The reason
    /// code comes from the client: one that is not a known code is counted
    /// as `other`, so a client cannot grow the label set.
    pub(crate) fn report(
        &self,
        verdict: &'static str,
        decided_by: &'static str,
        reason_code: &str,
    ) {
        self.reports
            .get_or_create(&ReportLabels { decided_by })
            .inc();
        self.decisions
            .get_or_create(&DecisionLabels {
                verdict,
                decided_by,
                reason_code: policy_core::ReasonCode::parse(reason_code)
                    .map_or("other", policy_core::ReasonCode::as_str),
            })
            .inc();
        if decided_by == "fail_open" {
            self.fail_open.inc();
        }
    }

    pub(crate) fn audit_append(&self, elapsed: Duration, ok: bool) {
        self.audit_append_seconds.observe(elapsed.as_secs_f64());
        if !ok {
            self.audit_append_failures.inc();
        }
    }

    pub(crate) fn set_audit_ready(&self, ready: bool) {
        self.audit_ready.set(i64::from(ready));
    }

    pub(crate) fn stream_opened(&self) -> StreamGuard<'_> {
        self.open_streams.inc();
        StreamGuard(&self.open_streams)
    }

    pub(crate) fn reload(&self, ok: bool) {
        self.reloads
            .get_or_create(&ResultLabels {
                result: if ok { "ok" } else { "rejected" },
            })
            .inc();
    }

    pub(crate) fn set_bundle(&self, hash: &str) {
        self.bundle.clear();
        self.bundle
            .get_or_create(&BundleLabels {
                hash: hash.to_owned(),
            })
            .set(1);
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Decrements the open-streams gauge when the stream ends.
#[derive(Debug)]
pub(crate) struct StreamGuard<'a>(&'a Gauge);

impl Drop for StreamGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Serves `/metrics`, `/healthz` (the process is up) and `/readyz` (200
/// while a valid bundle is loaded, the audit can commit and the state store
/// answers, else 503) on `listener` until `shutdown` resolves.
pub(crate) async fn serve_http(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    audit: Arc<dyn AuditStore>,
    state: Arc<dyn control_store::ControlStore>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::{StatusCode, header};
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let (audit, state) = (audit.clone(), state.clone());
                async move {
                    match (audit.health(), state.health()) {
                        (Ok(()), Ok(())) => (StatusCode::OK, "ready\n".to_owned()),
                        (Err(why), _) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: the audit cannot commit: {why}\n"),
                        ),
                        (Ok(()), Err(why)) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: the state store cannot answer: {why}\n"),
                        ),
                    }
                }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
