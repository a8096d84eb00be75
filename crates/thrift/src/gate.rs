//! A processor in front of another that answers every call with an application error while a
//! condition holds: a standby scheduler refusing CloudScoot calls and naming the leader.

use thrift::protocol::{TInputProtocol, TMessageIdentifier, TMessageType, TOutputProtocol, TType};
use thrift::server::TProcessor;
use thrift::{ApplicationError, ApplicationErrorKind};

/// Hands calls to `inner` while `refusal` returns `None`; otherwise reads the call, skips its
/// arguments and answers TApplicationException INTERNAL_ERROR "Internal error processing
/// <Method>: <refusal>" (the form of every CloudScoot failure, so clients report it as one).
pub struct Gate<P, F> {
    inner: P,
    refusal: F,
}

impl<P, F> Gate<P, F>
where
    P: TProcessor,
    F: Fn() -> Option<String>,
{
    pub fn new(inner: P, refusal: F) -> Gate<P, F> {
        Gate { inner, refusal }
    }
}

impl<P, F> TProcessor for Gate<P, F>
where
    P: TProcessor,
    F: Fn() -> Option<String>,
{
    fn process(
        &self,
        i: &mut dyn TInputProtocol,
        o: &mut dyn TOutputProtocol,
    ) -> thrift::Result<()> {
        let Some(reason) = (self.refusal)() else {
            return self.inner.process(i, o);
        };
        let call = i.read_message_begin()?;
        i.skip(TType::Struct)?;
        i.read_message_end()?;
        let error = ApplicationError::new(
            ApplicationErrorKind::InternalError,
            format!("Internal error processing {}: {reason}", call.name),
        );
        o.write_message_begin(&TMessageIdentifier::new(
            call.name,
            TMessageType::Exception,
            call.sequence_number,
        ))?;
        thrift::Error::write_application_error_to_out_protocol(&error, o)?;
        o.write_message_end()?;
        o.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use thrift::protocol::{TBinaryInputProtocol, TBinaryOutputProtocol, TStructIdentifier};

    use super::*;

    /// Records that a call reached it.
    struct Inner(AtomicBool);

    impl TProcessor for &Inner {
        fn process(
            &self,
            _i: &mut dyn TInputProtocol,
            _o: &mut dyn TOutputProtocol,
        ) -> thrift::Result<()> {
            self.0.store(true, Ordering::SeqCst);
            Ok(())
        }
    }

    fn call(method: &str, seq: i32) -> Vec<u8> {
        let mut request = Vec::new();
        {
            let mut o = TBinaryOutputProtocol::new(&mut request, true);
            o.write_message_begin(&TMessageIdentifier::new(method, TMessageType::Call, seq))
                .unwrap();
            o.write_struct_begin(&TStructIdentifier::new("args"))
                .unwrap();
            o.write_field_stop().unwrap();
            o.write_struct_end().unwrap();
            o.write_message_end().unwrap();
            o.flush().unwrap();
        }
        request
    }

    #[test]
    fn a_closed_gate_answers_with_the_refusal_an_open_one_passes_calls_on() {
        let inner = Inner(AtomicBool::new(false));
        let open = AtomicBool::new(false);
        let gate = Gate::new(&inner, || {
            (!open.load(Ordering::SeqCst)).then(|| "a standby; the leader is at h:1".to_string())
        });
        let request = call("RunJob", 7);
        let mut reply = Vec::new();
        gate.process(
            &mut TBinaryInputProtocol::new(&request[..], true),
            &mut TBinaryOutputProtocol::new(&mut reply, true),
        )
        .unwrap();
        assert!(!inner.0.load(Ordering::SeqCst));
        let mut i = TBinaryInputProtocol::new(&reply[..], true);
        let id = i.read_message_begin().unwrap();
        assert_eq!(
            (id.name.as_str(), id.message_type, id.sequence_number),
            ("RunJob", TMessageType::Exception, 7)
        );
        let error = thrift::Error::read_application_error_from_in_protocol(&mut i).unwrap();
        assert_eq!(error.kind, ApplicationErrorKind::InternalError);
        assert_eq!(
            error.message,
            "Internal error processing RunJob: a standby; the leader is at h:1"
        );

        open.store(true, Ordering::SeqCst);
        gate.process(
            &mut TBinaryInputProtocol::new(&request[..], true),
            &mut TBinaryOutputProtocol::new(&mut Vec::new(), true),
        )
        .unwrap();
        assert!(inner.0.load(Ordering::SeqCst));
    }
}
