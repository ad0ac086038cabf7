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
    let Some(code) = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return res;
    };
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let status = Status::new(Code::from_i32(code), percent_decode(&message));
    let mapped = inbound_error(&status);
    let Some(reason) = reason_code_of(&mapped) else {
        return res;
    };
    // grpc-message is percent-encoded: printable ASCII but `%` stays.
    let encoded: String = mapped
        .message()
        .bytes()
        .map(|b| {
            if b.is_ascii_graphic() && b != b'%' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    if let (Ok(s), Ok(m), Ok(r)) = (
        http::HeaderValue::from_str(&(mapped.code() as i32).to_string()),
        http::HeaderValue::from_str(&encoded),
        http::HeaderValue::from_str(&reason),
    ) {
        headers.insert("grpc-status", s);
        headers.insert("grpc-message", m);
        headers.insert(REASON_HEADER, r);
    }
    res
}

/// Decodes a `grpc-message` header value (percent-encoded UTF-8).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = bytes.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(&String::from_utf8_lossy(hex), 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
