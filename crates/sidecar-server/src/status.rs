//! gRPC statuses that carry a stable Gatehouse reason code.

use tonic::{Code, Status};

/// Response metadata key holding the reason code of an error status.
pub const REASON_HEADER: &str = "gatehouse-reason-code";

/// A status whose message starts with the reason code and whose metadata
/// carries it under [`REASON_HEADER`].
pub(crate) fn status(code: Code, reason_code: &str, message: impl AsRef<str>) -> Status {
    let mut md = tonic::metadata::MetadataMap::new();
    if let Ok(v) = reason_code.parse() {
        md.insert(REASON_HEADER, v);
    }
    Status::with_metadata(code, format!("{reason_code}: {}", message.as_ref()), md)
}

/// Maps a status raised while reading a client frame to one with a reason
/// code: oversized messages become `message_too_large`, undecodable ones
/// `malformed_frame`.
pub(crate) fn inbound_error(s: &Status) -> Status {
    if s.message().contains("message length too large") {
        status(Code::ResourceExhausted, "message_too_large", s.message())
    } else if matches!(
        s.code(),
        Code::Internal | Code::InvalidArgument | Code::DataLoss
    ) || s.message().contains("decode")
    {
        status(Code::InvalidArgument, "malformed_frame", s.message())
    } else {
        s.clone()
    }
}

/// The reason code carried by a status, if any.
pub fn reason_code_of(s: &Status) -> Option<String> {
    s.metadata()
        .get(REASON_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Gives every error status the transport raises before a handler runs a
/// reason code: a unary request that does not decode comes back from
/// tonic as INTERNAL with no code, and becomes INVALID_ARGUMENT
/// `malformed_frame` (or RESOURCE_EXHAUSTED `message_too_large`). Statuses
/// that already carry a code, and streams (whose errors are mapped where
/// frames are read), pass unchanged.
#[derive(Debug, Clone)]
pub(crate) struct ReasonCodes<S>(pub(crate) S);

/// The layer adding [`ReasonCodes`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReasonCodesLayer;

impl<S> tower::Layer<S> for ReasonCodesLayer {
    type Service = ReasonCodes<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ReasonCodes(inner)
    }
}

impl<S, Req, B> tower::Service<Req> for ReasonCodes<S>
where
    S: tower::Service<Req, Response = http::Response<B>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<B>;
    type Error = S::Error;
    type Future = futures::future::MapOk<S::Future, fn(http::Response<B>) -> http::Response<B>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        use futures::TryFutureExt as _;
        self.0.call(req).map_ok(tag_response as fn(_) -> _)
    }
}

/// Rewrites a trailers-only error response (the form tonic uses for an
/// error raised before the handler) to carry a reason code.
fn tag_response<B>(mut res: http::Response<B>) -> http::Response<B> {
    let headers = res.headers_mut();
    if headers.contains_key(REASON_HEADER) {
        return res;
    }
    let Some(raised) = Status::from_header_map(headers) else {
        return res;
    };
    let mapped = inbound_error(&raised);
    if reason_code_of(&mapped).is_some() && mapped.add_header(headers).is_err() {
        tracing::debug!(status = %raised.message(), "could not tag a transport error");
    }
    res
}
