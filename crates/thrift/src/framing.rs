//! Finds where one TBinaryProtocol message ends, without decoding it.
//!
//! Scoot's wire is unframed, so a server only knows it has a whole request by walking its
//! structure. [`MessageScanner`] walks it the way the Thrift runtime reads it (strict or old-style
//! header, then the argument struct skipped by wire types, under the same size and depth limits)
//! and refuses what the runtime would refuse before it is buffered. The walk is resumable: a
//! message that arrives in pieces is walked once, however many pieces there are.

use thrift::TConfiguration;

// TBinaryProtocol's type bytes.
const STOP: u8 = 0;
const VOID: u8 = 1;
const BOOL: u8 = 2;
const I8: u8 = 3;
const DOUBLE: u8 = 4;
const I16: u8 = 6;
const I32: u8 = 8;
const I64: u8 = 10;
const STRING: u8 = 11;
const STRUCT: u8 = 12;
const MAP: u8 = 13;
const SET: u8 = 14;
const LIST: u8 = 15;
const UUID: u8 = 16;

/// What one message may claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanLimits {
    pub max_message: usize,
    pub max_string: usize,
    pub max_container: usize,
    /// Nesting of structs and containers, the argument struct being 1.
    pub max_depth: usize,
}

impl ScanLimits {
    /// The limits the runtime decodes with, so the scanner never buffers what it would refuse.
    pub fn of(config: &TConfiguration) -> ScanLimits {
        ScanLimits {
            max_message: config.max_message_size().unwrap_or(usize::MAX),
            max_string: config.max_string_size().unwrap_or(usize::MAX),
            max_container: config.max_container_size().unwrap_or(usize::MAX),
            max_depth: config
                .max_recursion_depth()
                .unwrap_or(TConfiguration::DEFAULT_RECURSION_LIMIT),
        }
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("unsupported protocol version {0:#06x}")]
    BadVersion(u16),
    #[error("unknown message type {0}")]
    BadMessageType(u8),
    #[error("unknown field type {0}")]
    UnknownType(u8),
    #[error("a value of field type {0} cannot be read")]
    UnreadableType(u8),
    #[error("negative size {0}")]
    NegativeSize(i32),
    #[error("a string of {size} bytes exceeds the limit of {limit}")]
    StringTooLong { size: usize, limit: usize },
    #[error("a container of {size} elements exceeds the limit of {limit}")]
    ContainerTooLarge { size: usize, limit: usize },
    #[error("nesting deeper than {0}")]
    TooDeep(usize),
    #[error("a message longer than {0} bytes")]
    TooLarge(usize),
}

/// What comes next in the message.
#[derive(Clone, Copy, Debug)]
enum Expect {
    Header,
    /// Fields of a struct, up to its STOP.
    Fields,
    Value(u8),
    /// The rest of a list or set (`key == value`), or of a map (keys and values alternate,
    /// `remaining` counting both).
    Elements {
        key: u8,
        value: u8,
        remaining: u64,
    },
}

/// Walks one message at a time; see the module doc.
#[derive(Debug)]
pub struct MessageScanner {
    limits: ScanLimits,
    /// Bytes of the message walked so far.
    pos: usize,
    stack: Vec<Expect>,
}

impl MessageScanner {
    pub fn new(limits: ScanLimits) -> MessageScanner {
        MessageScanner {
            limits,
            pos: 0,
            stack: vec![Expect::Header],
        }
    }

    /// `buf` holds what has arrived of the message, from its first byte (and may run on into the
    /// next one); it must only grow between calls. Returns the message's length once all of it
    /// is there, after which the scanner is ready for the next message.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, ScanError> {
        while let Some(next) = self.stack.pop() {
            if !self.step(next, buf)? {
                self.stack.push(next);
                return Ok(None);
            }
        }
        let len = self.pos;
        self.pos = 0;
        self.stack.push(Expect::Header);
        Ok(Some(len))
    }

    /// Consumes `next` (pushing what it opens); false when `buf` does not hold enough yet.
    fn step(&mut self, next: Expect, buf: &[u8]) -> Result<bool, ScanError> {
        match next {
            Expect::Header => self.header(buf),
            Expect::Fields => {
                let Some(&[kind]) = self.peek(buf, 0, 1)? else {
                    return Ok(false);
                };
                if kind == STOP {
                    self.pos += 1;
                    return Ok(true);
                }
                known_type(kind)?;
                if self.peek(buf, 0, 3)?.is_none() {
                    return Ok(false);
                }
                self.pos += 3;
                self.stack.push(Expect::Fields);
                self.stack.push(Expect::Value(kind));
                Ok(true)
            }
            Expect::Elements {
                key,
                value,
                remaining,
            } => {
                if remaining > 0 {
                    self.stack.push(Expect::Elements {
                        key,
                        value,
                        remaining: remaining - 1,
                    });
                    let kind = if remaining % 2 == 0 { key } else { value };
                    self.stack.push(Expect::Value(kind));
                }
                Ok(true)
            }
            Expect::Value(kind) => self.value(kind, buf),
        }
    }

    fn header(&mut self, buf: &[u8]) -> Result<bool, ScanError> {
        let Some(first) = self.peek(buf, 0, 4)? else {
            return Ok(false);
        };
        let first = be_i32(first);
        // Strict: version word (holding the message type), name, sequence id. Old style: name,
        // message type byte, sequence id.
        let strict = first < 0;
        let name_at = if strict {
            let version = (first as u32 >> 16) as u16;
            if version != 0x8001 {
                return Err(ScanError::BadVersion(version));
            }
            4
        } else {
            0
        };
        let Some(name_len) = self.peek(buf, name_at, 4)? else {
            return Ok(false);
        };
        let after_name = name_at + 4 + self.string_size(be_i32(name_len))?;
        let (message_type_at, len) = if strict {
            (3, after_name + 4)
        } else {
            (after_name, after_name + 1 + 4)
        };
        let Some(header) = self.peek(buf, 0, len)? else {
            return Ok(false);
        };
        let message_type = header[message_type_at];
        // Call, Reply, Exception, OneWay.
        if !(1..=4).contains(&message_type) {
            return Err(ScanError::BadMessageType(message_type));
        }
        self.pos += len;
        self.open(Expect::Fields)?;
        Ok(true)
    }

    fn value(&mut self, kind: u8, buf: &[u8]) -> Result<bool, ScanError> {
        let fixed = match kind {
            BOOL | I8 => Some(1),
            I16 => Some(2),
            I32 => Some(4),
            DOUBLE | I64 => Some(8),
            UUID => Some(16),
            _ => None,
        };
        if let Some(size) = fixed {
            return self.skip(buf, size);
        }
        match kind {
            STRING => {
                let Some(size) = self.peek(buf, 0, 4)? else {
                    return Ok(false);
                };
                let size = self.string_size(be_i32(size))?;
                self.skip(buf, 4 + size)
            }
            STRUCT => {
                self.open(Expect::Fields)?;
                Ok(true)
            }
            LIST | SET => {
                let Some(head) = self.peek(buf, 0, 5)? else {
                    return Ok(false);
                };
                let element = known_type(head[0])?;
                let size = self.container_size(be_i32(&head[1..]))?;
                self.pos += 5;
                self.open(Expect::Elements {
                    key: element,
                    value: element,
                    remaining: size,
                })?;
                Ok(true)
            }
            MAP => {
                let Some(head) = self.peek(buf, 0, 6)? else {
                    return Ok(false);
                };
                let (key, value) = (known_type(head[0])?, known_type(head[1])?);
                let size = self.container_size(be_i32(&head[2..]))?;
                self.pos += 6;
                self.open(Expect::Elements {
                    key,
                    value,
                    remaining: 2 * size,
                })?;
                Ok(true)
            }
            STOP | VOID => Err(ScanError::UnreadableType(kind)),
            other => Err(ScanError::UnknownType(other)),
        }
    }

    /// `len` bytes at `offset` past the current position, if they have arrived.
    fn peek<'b>(
        &self,
        buf: &'b [u8],
        offset: usize,
        len: usize,
    ) -> Result<Option<&'b [u8]>, ScanError> {
        let start = self.pos.saturating_add(offset);
        let end = start.saturating_add(len);
        if end > self.limits.max_message {
            return Err(ScanError::TooLarge(self.limits.max_message));
        }
        Ok(buf.get(start..end))
    }

    fn skip(&mut self, buf: &[u8], len: usize) -> Result<bool, ScanError> {
        if self.peek(buf, 0, len)?.is_none() {
            return Ok(false);
        }
        self.pos += len;
        Ok(true)
    }

    /// Pushes a struct or container, bounding the nesting.
    fn open(&mut self, frame: Expect) -> Result<(), ScanError> {
        if self.stack.len() >= self.limits.max_depth {
            return Err(ScanError::TooDeep(self.limits.max_depth));
        }
        self.stack.push(frame);
        Ok(())
    }

    fn string_size(&self, size: i32) -> Result<usize, ScanError> {
        let size = usize::try_from(size).map_err(|_| ScanError::NegativeSize(size))?;
        if size > self.limits.max_string {
            return Err(ScanError::StringTooLong {
                size,
                limit: self.limits.max_string,
            });
        }
        Ok(size)
    }

    fn container_size(&self, size: i32) -> Result<u64, ScanError> {
        let size = usize::try_from(size).map_err(|_| ScanError::NegativeSize(size))?;
        if size > self.limits.max_container {
            return Err(ScanError::ContainerTooLarge {
                size,
                limit: self.limits.max_container,
            });
        }
        Ok(size as u64)
    }
}

/// Type bytes the runtime knows (it refuses the others even in an empty container's header).
fn known_type(kind: u8) -> Result<u8, ScanError> {
    match kind {
        STOP | VOID | BOOL | I8 | DOUBLE | I16 | I32 | I64 | STRING | STRUCT | MAP | SET | LIST
        | UUID => Ok(kind),
        other => Err(ScanError::UnknownType(other)),
    }
}

fn be_i32(bytes: &[u8]) -> i32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[..4]);
    i32::from_be_bytes(word)
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use thrift::protocol::{
        TBinaryInputProtocol, TBinaryOutputProtocol, TFieldIdentifier, TInputProtocol,
        TListIdentifier, TMapIdentifier, TMessageIdentifier, TMessageType, TOutputProtocol,
        TSetIdentifier, TStructIdentifier, TType,
    };

    use super::*;

    fn limits() -> ScanLimits {
        ScanLimits::of(&crate::wire_limits())
    }

    /// Builds a message with the runtime's own writer (strict or old-style header).
    struct Message {
        bytes: Vec<u8>,
        strict: bool,
    }

    impl Message {
        fn start(strict: bool, kind: TMessageType) -> Message {
            let mut message = Message {
                bytes: Vec::new(),
                strict,
            };
            // The argument struct's begin and end write nothing; only its fields and STOP do.
            message.write(|p| p.write_message_begin(&TMessageIdentifier::new("Method", kind, 7)));
            message
        }

        fn write(&mut self, f: impl FnOnce(&mut dyn TOutputProtocol) -> thrift::Result<()>) {
            let mut protocol = TBinaryOutputProtocol::new(&mut self.bytes, self.strict);
            f(&mut protocol).unwrap();
        }

        fn field(&mut self, kind: TType, id: i16) {
            self.write(|p| p.write_field_begin(&TFieldIdentifier::new("f", kind, id)));
        }

        fn end(mut self) -> Vec<u8> {
            self.write(|p| {
                p.write_field_stop()?;
                p.write_message_end()
            });
            self.bytes
        }
    }

    fn empty(strict: bool, kind: TMessageType) -> Vec<u8> {
        Message::start(strict, kind).end()
    }

    /// Every wire type, nested containers, empty containers, and a struct in a struct.
    fn every_shape(strict: bool) -> Vec<u8> {
        let mut m = Message::start(strict, TMessageType::Call);
        m.write(|p| {
            for (kind, id) in [(TType::Bool, 1), (TType::I08, 2), (TType::I16, 3)] {
                p.write_field_begin(&TFieldIdentifier::new("f", kind, id))?;
                match kind {
                    TType::Bool => p.write_bool(true)?,
                    TType::I08 => p.write_i8(-3)?,
                    _ => p.write_i16(300)?,
                }
            }
            p.write_field_begin(&TFieldIdentifier::new("f", TType::I32, 4))?;
            p.write_i32(-70_000)?;
            p.write_field_begin(&TFieldIdentifier::new("f", TType::I64, 5))?;
            p.write_i64(1 << 40)?;
            p.write_field_begin(&TFieldIdentifier::new("f", TType::Double, 6))?;
            p.write_double(2.5)?;
            p.write_field_begin(&TFieldIdentifier::new("f", TType::String, 7))?;
            p.write_string("hello")?;
            p.write_field_begin(&TFieldIdentifier::new("f", TType::String, 8))?;
            p.write_bytes(&[])
        });
        // The runtime's UUID writer needs the uuid crate; the wire form is 16 raw bytes.
        m.field(TType::Uuid, 9);
        m.bytes.extend([0xab; 16]);
        m.write(|p| {
            p.write_field_begin(&TFieldIdentifier::new("f", TType::Struct, 10))?;
            p.write_struct_begin(&TStructIdentifier::new("inner"))?;
            p.write_field_begin(&TFieldIdentifier::new("f", TType::String, 1))?;
            p.write_string("nested")?;
            p.write_field_stop()?;
            p.write_struct_end()?;
            // map<string, list<struct>>
            p.write_field_begin(&TFieldIdentifier::new("f", TType::Map, 11))?;
            p.write_map_begin(&TMapIdentifier::new(TType::String, TType::List, 2))?;
            for key in ["a", "b"] {
                p.write_string(key)?;
                p.write_list_begin(&TListIdentifier::new(TType::Struct, 2))?;
                for n in 0..2 {
                    p.write_struct_begin(&TStructIdentifier::new("e"))?;
                    p.write_field_begin(&TFieldIdentifier::new("f", TType::I32, 1))?;
                    p.write_i32(n)?;
                    p.write_field_stop()?;
                    p.write_struct_end()?;
                }
            }
            // set<list<i16>>, the inner lists empty and not
            p.write_field_begin(&TFieldIdentifier::new("f", TType::Set, 12))?;
            p.write_set_begin(&TSetIdentifier::new(TType::List, 2))?;
            p.write_list_begin(&TListIdentifier::new(TType::I16, 0))?;
            p.write_list_begin(&TListIdentifier::new(TType::I16, 3))?;
            for n in 0..3 {
                p.write_i16(n)?;
            }
            // Empty containers of every kind.
            p.write_field_begin(&TFieldIdentifier::new("f", TType::Map, 13))?;
            p.write_map_begin(&TMapIdentifier::new(TType::I64, TType::Double, 0))?;
            p.write_field_begin(&TFieldIdentifier::new("f", TType::List, 14))?;
            p.write_list_begin(&TListIdentifier::new(TType::String, 0))?;
            p.write_field_begin(&TFieldIdentifier::new("f", TType::Set, 15))?;
            p.write_set_begin(&TSetIdentifier::new(TType::Bool, 0))
        });
        m.end()
    }

    fn shapes() -> Vec<Vec<u8>> {
        let mut shapes = Vec::new();
        for strict in [true, false] {
            shapes.push(empty(strict, TMessageType::Call));
            shapes.push(empty(strict, TMessageType::OneWay));
            shapes.push(every_shape(strict));
        }
        shapes
    }

    /// Where the runtime's reader, skipping the arguments, says the message ends.
    fn runtime_len(bytes: &[u8]) -> usize {
        let mut cursor = Cursor::new(bytes);
        {
            let mut input =
                TBinaryInputProtocol::with_config(&mut cursor, false, crate::wire_limits());
            input.read_message_begin().unwrap();
            input.skip(TType::Struct).unwrap();
        }
        cursor.position() as usize
    }

    fn scan_all(bytes: &[u8]) -> Result<Option<usize>, ScanError> {
        MessageScanner::new(limits()).scan(bytes)
    }

    #[test]
    fn complete_messages_end_where_the_runtime_says() {
        for bytes in shapes() {
            assert_eq!(scan_all(&bytes), Ok(Some(bytes.len())), "{bytes:?}");
            assert_eq!(runtime_len(&bytes), bytes.len());
        }
    }

    #[test]
    fn every_split_waits_for_the_last_byte() {
        for bytes in shapes() {
            // One scanner fed a byte at a time, and a fresh scanner at every length.
            let mut scanner = MessageScanner::new(limits());
            for end in 0..bytes.len() {
                assert_eq!(scanner.scan(&bytes[..end]), Ok(None), "resumed at {end}");
                assert_eq!(scan_all(&bytes[..end]), Ok(None), "fresh at {end}");
            }
            assert_eq!(scanner.scan(&bytes), Ok(Some(bytes.len())));
        }
    }

    #[test]
    fn back_to_back_messages_are_told_apart() {
        let (first, second) = (every_shape(false), every_shape(true));
        let mut stream = [first.clone(), second.clone(), first.clone()].concat();
        let mut scanner = MessageScanner::new(limits());
        for expected in [&first, &second, &first] {
            let len = scanner.scan(&stream).unwrap().unwrap();
            assert_eq!(&stream[..len], expected.as_slice());
            stream.drain(..len);
        }
        assert!(stream.is_empty());
        assert_eq!(scanner.scan(&stream), Ok(None));
    }

    fn header(strict: bool) -> Vec<u8> {
        let mut m = Message::start(strict, TMessageType::Call);
        m.write(|_| Ok(()));
        m.bytes
    }

    fn with_field(kind: u8, value: &[u8]) -> Vec<u8> {
        let mut bytes = header(true);
        bytes.extend([kind, 0, 1]);
        bytes.extend(value);
        bytes
    }

    #[test]
    fn oversized_claims_are_refused_before_the_bytes_arrive() {
        let limits = limits();
        let too_long = (limits.max_string as i32 + 1).to_be_bytes();
        assert_eq!(
            scan_all(&with_field(STRING, &too_long)),
            Err(ScanError::StringTooLong {
                size: limits.max_string + 1,
                limit: limits.max_string
            })
        );
        let too_many = (limits.max_container as i32 + 1).to_be_bytes();
        let mut list = vec![I32];
        list.extend(too_many);
        assert!(matches!(
            scan_all(&with_field(LIST, &list)),
            Err(ScanError::ContainerTooLarge { .. })
        ));
        let mut map = vec![I32, I32];
        map.extend(too_many);
        assert!(matches!(
            scan_all(&with_field(MAP, &map)),
            Err(ScanError::ContainerTooLarge { .. })
        ));
        assert_eq!(
            scan_all(&with_field(STRING, &(-1i32).to_be_bytes())),
            Err(ScanError::NegativeSize(-1))
        );
        // A message name counts as a string too, in both header styles.
        let mut old_style = (limits.max_string as i32 + 1).to_be_bytes().to_vec();
        old_style.extend(b"name");
        assert!(matches!(
            scan_all(&old_style),
            Err(ScanError::StringTooLong { .. })
        ));

        let small = ScanLimits {
            max_message: 64,
            ..limits
        };
        let string_of = |n: usize| {
            let mut value = (n as i32).to_be_bytes().to_vec();
            value.extend(vec![b'x'; n]);
            with_field(STRING, &value)
        };
        let fits = [string_of(10), vec![STOP]].concat();
        assert_eq!(MessageScanner::new(small).scan(&fits), Ok(Some(fits.len())));
        // Refused from the length prefix alone.
        assert_eq!(
            MessageScanner::new(small).scan(&string_of(100)[..small.max_message - 10]),
            Err(ScanError::TooLarge(64))
        );
    }

    #[test]
    fn nesting_is_bounded() {
        let nested = |depth: usize| {
            // The argument struct, then lists of lists down to `depth`.
            let mut bytes = header(true);
            bytes.extend([LIST, 0, 1]);
            for _ in 2..depth {
                bytes.extend([LIST, 0, 0, 0, 1]);
            }
            bytes.extend([I32, 0, 0, 0, 1, 0, 0, 0, 5, STOP]);
            bytes
        };
        let max = limits().max_depth;
        let ok = nested(max);
        assert_eq!(scan_all(&ok), Ok(Some(ok.len())));
        assert_eq!(scan_all(&nested(max + 1)), Err(ScanError::TooDeep(max)));
    }

    #[test]
    fn garbage_is_refused() {
        // An HTTP request read as an old-style header claims a name of ~1.2 GB.
        assert!(matches!(
            scan_all(b"GET / HTTP/1.1\r\n\r\n"),
            Err(ScanError::StringTooLong { .. })
        ));
        assert_eq!(
            scan_all(&[0x80, 0x02, 0, 1, 0, 0, 0, 0]),
            Err(ScanError::BadVersion(0x8002))
        );
        let mut bad_kind = header(true);
        bad_kind[3] = 9;
        assert_eq!(scan_all(&bad_kind), Err(ScanError::BadMessageType(9)));
        let mut old_style = header(false);
        let at = old_style.len() - 5;
        old_style[at] = 0;
        assert_eq!(scan_all(&old_style), Err(ScanError::BadMessageType(0)));
        assert_eq!(
            scan_all(&with_field(5, &[0])),
            Err(ScanError::UnknownType(5))
        );
        assert_eq!(
            scan_all(&with_field(VOID, &[0])),
            Err(ScanError::UnreadableType(VOID))
        );
        assert_eq!(
            scan_all(&with_field(LIST, &[0x42, 0, 0, 0, 0])),
            Err(ScanError::UnknownType(0x42))
        );
        assert_eq!(
            scan_all(&with_field(LIST, &[STOP, 0, 0, 0, 1])),
            Err(ScanError::UnreadableType(STOP))
        );
    }
}
