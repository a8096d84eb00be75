//! Server-side views of REAPI messages that keep client-supplied protos as bytes.
//!
//! Digests of protos are taken over the bytes a client produced, and a server that decodes and
//! re-encodes a message may produce other bytes (unknown fields dropped, different field order).
//! So the servers in this module, wire-compatible with the standard `ActionCache` and
//! `ContentAddressableStorage` services, carry those protos as [`Bytes`]:
//!
//! * `UpdateActionResult` receives the ActionResult as the bytes sent
//!   ([`UpdateActionResultRequestRaw`]), and both ActionCache methods answer with stored bytes
//!   ([`RawMessage`]).
//! * `GetTree` answers with Directory blobs exactly as stored ([`GetTreeResponseRaw`]).
//!
//! A length-delimited bytes field and an embedded message field look the same on the wire,
//! which is what makes these types interchangeable with the standard ones. Clients keep using
//! the standard generated clients.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::encoding::{DecodeContext, WireType, decode_varint, encode_key, encode_varint};

use crate::reapi::v2;

include!(concat!(
    env!("OUT_DIR"),
    "/build.bazel.remote.execution.v2.ActionCache.rs"
));
include!(concat!(
    env!("OUT_DIR"),
    "/build.bazel.remote.execution.v2.ContentAddressableStorage.rs"
));

/// An encoded message of any type, kept as its bytes. Encoding writes the bytes unchanged.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RawMessage(pub Bytes);

impl fmt::Debug for RawMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RawMessage({} bytes)", self.0.len())
    }
}

impl prost::Message for RawMessage {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    /// Appends each field as it came (proto3 has no groups, so they are refused).
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        _ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        let mut out = BytesMut::from(std::mem::take(&mut self.0));
        encode_key(tag, wire_type, &mut out);
        let copy = match wire_type {
            WireType::Varint => {
                encode_varint(decode_varint(buf)?, &mut out);
                0
            }
            WireType::ThirtyTwoBit => 4,
            WireType::SixtyFourBit => 8,
            WireType::LengthDelimited => {
                let len = decode_varint(buf)?;
                encode_varint(len, &mut out);
                usize::try_from(len).unwrap_or(usize::MAX)
            }
            WireType::StartGroup | WireType::EndGroup => {
                #[allow(deprecated)]
                return Err(prost::DecodeError::new("groups are not supported"));
            }
        };
        if copy > buf.remaining() {
            #[allow(deprecated)]
            return Err(prost::DecodeError::new("buffer underflow"));
        }
        out.put(buf.take(copy));
        self.0 = out.freeze();
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0 = Bytes::new();
    }
}

/// `UpdateActionResultRequest` with the ActionResult (field 3) as the bytes the client sent.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UpdateActionResultRequestRaw {
    #[prost(string, tag = "1")]
    pub instance_name: String,
    #[prost(message, optional, tag = "2")]
    pub action_digest: Option<v2::Digest>,
    /// `None` when the client sent no ActionResult at all; an empty one is `Some` of no bytes.
    #[prost(bytes = "bytes", optional, tag = "3")]
    pub action_result: Option<Bytes>,
    #[prost(message, optional, tag = "4")]
    pub results_cache_policy: Option<v2::ResultsCachePolicy>,
    #[prost(enumeration = "v2::digest_function::Value", tag = "5")]
    pub digest_function: i32,
}

/// `GetTreeResponse` with each Directory (field 1) as the bytes of its blob.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetTreeResponseRaw {
    #[prost(bytes = "bytes", repeated, tag = "1")]
    pub directories: Vec<Bytes>,
    #[prost(string, tag = "2")]
    pub next_page_token: String,
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn raw_views_match_the_standard_messages() {
        let result = v2::ActionResult {
            exit_code: 3,
            stdout_digest: Some(v2::Digest {
                hash: "ab".into(),
                size_bytes: 7,
            }),
            ..Default::default()
        };
        let request = v2::UpdateActionResultRequest {
            instance_name: "a/b".into(),
            action_digest: Some(v2::Digest {
                hash: "cd".into(),
                size_bytes: 1,
            }),
            action_result: Some(result.clone()),
            results_cache_policy: None,
            digest_function: v2::digest_function::Value::Sha256 as i32,
        };
        let raw = UpdateActionResultRequestRaw::decode(request.encode_to_vec().as_slice()).unwrap();
        assert_eq!(raw.instance_name, "a/b");
        assert_eq!(
            raw.action_result.as_deref(),
            Some(&result.encode_to_vec()[..])
        );

        // Whatever RawMessage decodes, it encodes again unchanged.
        let bytes = result.encode_to_vec();
        let message = RawMessage::decode(bytes.as_slice()).unwrap();
        assert_eq!(message.encode_to_vec(), bytes);
        assert_eq!(v2::ActionResult::decode(message.0).unwrap(), result);

        let dir = v2::Directory {
            files: vec![v2::FileNode {
                name: "f".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let tree = GetTreeResponseRaw {
            directories: vec![Bytes::from(dir.encode_to_vec())],
            next_page_token: "7".into(),
        };
        let standard = v2::GetTreeResponse::decode(tree.encode_to_vec().as_slice()).unwrap();
        assert_eq!(standard.directories, vec![dir]);
        assert_eq!(standard.next_page_token, "7");
    }

    #[test]
    fn absent_action_result_is_none() {
        let request = v2::UpdateActionResultRequest::default();
        let raw = UpdateActionResultRequestRaw::decode(request.encode_to_vec().as_slice()).unwrap();
        assert_eq!(raw.action_result, None);
    }
}
