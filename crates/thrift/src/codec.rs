//! Thrift structs as bytes (TBinaryProtocol, strict), for payloads stored outside an RPC: the
//! scheduler keeps jobs (`sched.thrift` Job) and task results (`worker.thrift` RunStatus) in its
//! saga log this way.

use thrift::protocol::{
    TBinaryInputProtocol, TBinaryOutputProtocol, TOutputProtocol, TSerializable,
};

pub fn to_bytes<T: TSerializable>(value: &T) -> thrift::Result<Vec<u8>> {
    let mut buf = Vec::new();
    {
        let mut out = TBinaryOutputProtocol::new(&mut buf, true);
        value.write_to_out_protocol(&mut out)?;
        out.flush()?;
    }
    Ok(buf)
}

pub fn from_bytes<T: TSerializable>(bytes: &[u8]) -> thrift::Result<T> {
    let mut input = TBinaryInputProtocol::with_config(bytes, true, crate::wire_limits());
    T::read_from_in_protocol(&mut input)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched;

    #[test]
    fn round_trip_and_garbage() {
        let job = sched::Job::new(
            "id".to_string(),
            sched::JobDefinition::new(Some("t".to_string()), None, Some(1), None, None, None),
        );
        let bytes = to_bytes(&job).unwrap();
        assert_eq!(from_bytes::<sched::Job>(&bytes).unwrap(), job);
        assert!(from_bytes::<sched::Job>(&bytes[..bytes.len() / 2]).is_err());
        assert!(from_bytes::<sched::Job>(b"\xff\xff\xff\xff garbage").is_err());
    }
}
