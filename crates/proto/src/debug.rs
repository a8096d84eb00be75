//! Debug for the messages that carry blob bytes: lengths instead of contents, so that logging a
//! request never dumps a blob.

use std::fmt;

use crate::bytestream::{ReadResponse, WriteRequest};
use crate::reapi::v2::{batch_read_blobs_response, batch_update_blobs_request};

impl fmt::Debug for ReadResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadResponse")
            .field("data_len", &self.data.len())
            .finish()
    }
}

impl fmt::Debug for WriteRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteRequest")
            .field("resource_name", &self.resource_name)
            .field("write_offset", &self.write_offset)
            .field("finish_write", &self.finish_write)
            .field("data_len", &self.data.len())
            .finish()
    }
}

impl fmt::Debug for batch_update_blobs_request::Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("digest", &self.digest)
            .field("data_len", &self.data.len())
            .field("compressor", &self.compressor)
            .finish()
    }
}

impl fmt::Debug for batch_read_blobs_response::Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("digest", &self.digest)
            .field("data_len", &self.data.len())
            .field("compressor", &self.compressor)
            .field("status", &self.status)
            .finish()
    }
}
