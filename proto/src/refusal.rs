//! Refused accepts as typed gRPC errors: the master puts an
//! [`AcceptRefusal`](crate::v1::AcceptRefusal) in the status details, a
//! framework reads it back, and nobody classifies an error by its text.

use prost::Message;

use crate::v1::{AcceptRefusal, accept_refusal::Reason};

/// The status that carries `refusal`: `PermissionDenied` for what the
/// framework may not do, else `InvalidArgument`.
pub fn refusal_status(reason: Reason, message: impl Into<String>, task_id: &str) -> tonic::Status {
    let code = match reason {
        Reason::NotAuthorized => tonic::Code::PermissionDenied,
        _ => tonic::Code::InvalidArgument,
    };
    let refusal = AcceptRefusal {
        reason: reason as i32,
        message: message.into(),
        task_id: task_id.to_string(),
    };
    tonic::Status::with_details(
        code,
        refusal.message.clone(),
        tonic::codegen::Bytes::from(refusal.encode_to_vec()),
    )
}

/// The refusal a status carries, if it carries one.
pub fn refusal_of(status: &tonic::Status) -> Option<AcceptRefusal> {
    if status.details().is_empty() {
        return None;
    }
    AcceptRefusal::decode(status.details()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_survives_the_status() {
        let status = refusal_status(Reason::OfferNotOutstanding, "offer `o1` is gone", "");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let back = refusal_of(&status).expect("details decode");
        assert_eq!(back.reason(), Reason::OfferNotOutstanding);
        assert_eq!(back.message, "offer `o1` is gone");
        assert!(refusal_of(&tonic::Status::invalid_argument("plain")).is_none());
    }
}
