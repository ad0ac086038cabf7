//! `gatehouse.v1.AdminService`: revoke, grant, explain.

use std::sync::Arc;

use audit_store::AuditRecord;
use hook_proto::v1::{self, revoke_request::Target};
use policy_core::proto::{event_from_proto, explanation_to_proto, revocations_to_proto};
use tonic::{Code, Request, Response, Status};

use crate::service::{Inner, now_ms};
use crate::status::status;

/// Reads the admin token in `path`, or creates one (32 random bytes, hex)
/// in a new file with mode 0600. Returns the token and whether it was
/// created. A server started without an admin token uses this, so the
/// admin API is never open by default.
pub fn load_or_create_admin_token(path: &std::path::Path) -> std::io::Result<(String, bool)> {
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => return Ok((t.trim().to_owned(), false)),
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is empty", path.display()),
            ));
        }
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        Err(_) => {}
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    let token = hex::encode(bytes);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    std::io::Write::write_all(&mut f, format!("{token}\n").as_bytes())?;
    f.sync_all()?;
    Ok((token, true))
}

/// Default lifetime of a grant.
const DEFAULT_GRANT_TTL_MS: u64 = 10 * 60_000;

#[derive(Debug, Clone)]
pub(crate) struct AdminSvc {
    inner: Arc<Inner>,
    token: Option<String>,
}

impl AdminSvc {
    pub(crate) fn new(inner: Arc<Inner>, token: Option<String>) -> Self {
        Self { inner, token }
    }

    fn authorize<T>(&self, req: &Request<T>) -> Result<(), Status> {
        // A client certificate decides first: an administrator's passes, an
        // agent's never does (an agent must not grant its own asks or lift
        // its own revocation), whatever token it holds.
        if let Some(certs) = req.peer_certs()
            && let Some(leaf) = certs.first()
        {
            return match crate::tls::identity_of(leaf) {
                Some(crate::tls::PeerIdentity::Admin(_)) => Ok(()),
                Some(crate::tls::PeerIdentity::Agent(a)) => Err(status(
                    Code::PermissionDenied,
                    "agent_cannot_administer",
                    format!("agent `{a}` may not call the admin API"),
                )),
                None => Err(status(
                    Code::Unauthenticated,
                    "unauthenticated",
                    "the client certificate names no administrator",
                )),
            };
        }
        let Some(token) = &self.token else {
            return Ok(());
        };
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // Compare in constant time.
        let ok = given.is_some_and(|g| {
            g.len() == token.len()
                && g.bytes()
                    .zip(token.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        });
        if ok {
            Ok(())
        } else {
            Err(status(
                Code::Unauthenticated,
                "unauthenticated",
                "a valid admin bearer token is required",
            ))
        }
    }

    async fn audit(&self, record: AuditRecord) -> Result<u64, Status> {
        self.inner.audit.append(record).await.map_err(|e| {
            status(
                Code::Unavailable,
                "audit_unavailable",
                format!("the action could not be recorded: {e}"),
            )
        })
    }
}

#[tonic::async_trait]
impl v1::admin_service_server::AdminService for AdminSvc {
    async fn revoke(
        &self,
        request: Request<v1::RevokeRequest>,
    ) -> Result<Response<v1::RevokeResponse>, Status> {
        self.authorize(&request)?;
        let req = request.into_inner();
        let agent = match req.target() {
            Target::Agent => true,
            Target::Session => false,
            Target::Unspecified => {
                return Err(status(
                    Code::InvalidArgument,
                    "invalid_request",
                    "target must be agent or session",
                ));
            }
        };
        if req.id.is_empty() {
            return Err(status(
                Code::InvalidArgument,
                "invalid_request",
                "an id is required",
            ));
        }
        // Record first: an action that cannot be audited is not taken.
        let seq = self
            .audit(AuditRecord {
                time_ms: now_ms(),
                record_kind: "revocation".into(),
                agent_id: if agent { req.id.clone() } else { String::new() },
                session_id: if agent { String::new() } else { req.id.clone() },
                event_kind: if req.restore { "restore" } else { "revoke" }.into(),
                event_id: format!("revoke-{}-{}", req.id, now_ms()),
                resource: format!("{}:{}", if agent { "agent" } else { "session" }, req.id),
                verdict: if req.restore { "allow" } else { "deny" }.into(),
                reason_code: "revoked".into(),
                decided_by: "admin".into(),
                detail: serde_json::json!({ "reason": req.reason }).to_string(),
                ..AuditRecord::default()
            })
            .await?;
        let r = self
            .inner
            .control
            .revoke(agent, &req.id, req.restore)
            .await
            .map_err(|e| status(Code::Unavailable, "state_unavailable", e.to_string()))?;
        tracing::warn!(agent, id = %req.id, restore = req.restore, "revocation changed");
        if !self.inner.control.flush().await {
            tracing::error!(id = %req.id, "the revocation is in force but not yet persisted");
        }
        Ok(Response::new(v1::RevokeResponse {
            revocations: Some(revocations_to_proto(&r)),
            audit_seq: seq,
        }))
    }

    async fn grant(
        &self,
        request: Request<v1::GrantRequest>,
    ) -> Result<Response<v1::GrantResponse>, Status> {
        self.authorize(&request)?;
        let req = request.into_inner();
        let ttl = if req.ttl_ms == 0 {
            DEFAULT_GRANT_TTL_MS
        } else {
            req.ttl_ms
        };
        let found = self
            .inner
            .control
            .grant(&req.approval_id, ttl, control_store::now_ms())
            .await
            .map_err(|e| status(Code::Unavailable, "state_unavailable", e.to_string()))?;
        let Some(g) = found else {
            return Err(status(
                Code::NotFound,
                "unknown_approval",
                format!(
                    "no pending approval `{}` (unknown or expired)",
                    req.approval_id
                ),
            ));
        };
        if !self.inner.control.flush().await {
            tracing::error!(approval = %g.approval_id, "the grant is in force but not yet persisted");
        }
        let seq = self
            .audit(AuditRecord {
                time_ms: now_ms(),
                record_kind: "grant".into(),
                agent_id: g.agent_id.clone(),
                session_id: g.session_id.clone(),
                event_kind: g.action.clone(),
                event_id: format!("grant-{}-{}", g.approval_id, now_ms()),
                resource: g.resource.clone(),
                verdict: "allow".into(),
                reason_code: "granted".into(),
                decided_by: "admin".into(),
                detail: serde_json::json!({
                    "approval_id": g.approval_id,
                    "expires_ms": g.expires_ms,
                    "granted_by": req.granted_by,
                })
                .to_string(),
                ..AuditRecord::default()
            })
            .await?;
        Ok(Response::new(v1::GrantResponse {
            approval_id: g.approval_id,
            agent_id: g.agent_id,
            session_id: g.session_id,
            action: g.action,
            resource: g.resource,
            expires_ms: i64::try_from(g.expires_ms).unwrap_or(i64::MAX),
            audit_seq: seq,
        }))
    }

    async fn explain(
        &self,
        request: Request<v1::HookEvent>,
    ) -> Result<Response<v1::Explanation>, Status> {
        self.authorize(&request)?;
        let wire = request.into_inner();
        let event = event_from_proto(&wire)
            .map_err(|e| status(Code::InvalidArgument, "malformed_event", e.to_string()))?;
        let bundle = self.inner.policy.current();
        let mut x = explanation_to_proto(&bundle, &event, v1::DecidedBy::Server);
        if let Some(d) = &mut x.decision {
            d.correlation_id = wire.correlation_id;
        }
        Ok(Response::new(x))
    }
}
