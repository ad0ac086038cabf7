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
