//! Reading Apache Thrift's JSON protocol (TJSONProtocol), which Go Scoot used for the task
//! results in its saga log (`thrifthelpers.JsonSerialize` of a worker RunStatus).
//!
//! The Rust thrift library has no JSON protocol, but TJSON is self-describing (every value names
//! its type), so a document is transcoded to TBinaryProtocol bytes and decoded by the generated
//! code like any other payload:
//!
//! ```text
//! struct = {"<field id>": {"<type>": value}, ...}
//! list   = ["<elem type>", count, elem...]            (set likewise)
//! map    = ["<key type>", "<value type>", count, {"<key>": value, ...}]
//! types  = tf i8 i16 i32 i64 dbl str rec map lst set
//! ```
//!
//! Map keys are always JSON strings (numbers and bools quoted). Binary fields are `str` holding
//! base64; without the IDL they cannot be told from strings, so they arrive as that base64 text
//! (no field Scoot wrote to its saga log is binary).

use serde_json::{Map, Value};
use thrift::protocol::{
    TBinaryOutputProtocol, TFieldIdentifier, TListIdentifier, TMapIdentifier, TOutputProtocol,
    TSerializable, TSetIdentifier, TStructIdentifier, TType,
};

/// Why a TJSON document could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TjsonError {
    #[error("not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("not a Thrift JSON document: {0}")]
    Shape(String),
    #[error("decoding the transcoded struct: {0}")]
    Decode(String),
}

/// Nesting deeper than this is refused, as the binary decoder refuses it.
const MAX_DEPTH: usize = 64;

/// Decodes `T` from TJSON bytes.
pub fn from_tjson<T: TSerializable>(bytes: &[u8]) -> Result<T, TjsonError> {
    let binary = to_binary(bytes)?;
    crate::codec::from_bytes(&binary).map_err(|e| TjsonError::Decode(crate::describe(&e)))
}

/// Transcodes a TJSON struct to strict TBinaryProtocol bytes.
pub fn to_binary(bytes: &[u8]) -> Result<Vec<u8>, TjsonError> {
    let doc: Value = serde_json::from_slice(bytes)?;
    let mut buf = Vec::new();
    {
        let mut out = TBinaryOutputProtocol::new(&mut buf, true);
        let object = doc
            .as_object()
            .ok_or_else(|| shape("the top level is not a struct (a JSON object)"))?;
        write_struct(&mut out, object, 0)?;
        out.flush().map_err(thrift_err)?;
    }
    Ok(buf)
}

fn shape(what: impl Into<String>) -> TjsonError {
    TjsonError::Shape(what.into())
}

fn thrift_err(err: thrift::Error) -> TjsonError {
    TjsonError::Shape(crate::describe(&err))
}

fn ttype(name: &str) -> Result<TType, TjsonError> {
    Ok(match name {
        "tf" => TType::Bool,
        "i8" => TType::I08,
        "i16" => TType::I16,
        "i32" => TType::I32,
        "i64" => TType::I64,
        "dbl" => TType::Double,
        "str" => TType::String,
        "rec" => TType::Struct,
        "map" => TType::Map,
        "lst" => TType::List,
        "set" => TType::Set,
        other => return Err(shape(format!("unknown type {other:?}"))),
    })
}

fn write_struct(
    out: &mut dyn TOutputProtocol,
    fields: &Map<String, Value>,
    depth: usize,
) -> Result<(), TjsonError> {
    if depth > MAX_DEPTH {
        return Err(shape("nested too deeply"));
    }
    out.write_struct_begin(&TStructIdentifier::new("tjson"))
        .map_err(thrift_err)?;
    for (id, typed) in fields {
        let id: i16 = id
            .parse()
            .map_err(|_| shape(format!("field id {id:?} is not a number")))?;
        let typed = typed
            .as_object()
            .filter(|o| o.len() == 1)
            .ok_or_else(|| shape(format!("field {id} is not {{\"<type>\": value}}")))?;
        let Some((type_name, value)) = typed.iter().next() else {
            return Err(shape(format!("field {id} has no value")));
        };
        let kind = ttype(type_name)?;
        out.write_field_begin(&TFieldIdentifier::new::<Option<String>, String, i16>(
            None, kind, id,
        ))
        .map_err(thrift_err)?;
        write_value(out, kind, value, depth + 1)?;
        out.write_field_end().map_err(thrift_err)?;
    }
    out.write_field_stop().map_err(thrift_err)?;
    out.write_struct_end().map_err(thrift_err)
}

fn integer(value: &Value) -> Result<i64, TjsonError> {
    match value {
        Value::Number(n) => n.as_i64(),
        // TJSON quotes numbers that are map keys.
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| shape(format!("{value} is not an integer")))
}

fn narrow<T: TryFrom<i64>>(value: &Value) -> Result<T, TjsonError> {
    T::try_from(integer(value)?).map_err(|_| shape(format!("{value} is out of range")))
}

fn double(value: &Value) -> Result<f64, TjsonError> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.as_str() {
            "NaN" => Some(f64::NAN),
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            other => other.parse().ok(),
        },
        _ => None,
    }
    .ok_or_else(|| shape(format!("{value} is not a double")))
}

fn elements(value: &Value, header: usize) -> Result<(&[Value], usize), TjsonError> {
    let items = value
        .as_array()
        .ok_or_else(|| shape(format!("{value} is not a container (a JSON array)")))?;
    if items.len() < header + 1 {
        return Err(shape("a container without its header"));
    }
    let count: usize = narrow::<u32>(&items[header])? as usize;
    Ok((&items[header + 1..], count))
}

fn type_at(items: &Value, i: usize) -> Result<TType, TjsonError> {
    items
        .get(i)
        .and_then(Value::as_str)
        .ok_or_else(|| shape("a container without its element type"))
        .and_then(ttype)
}

fn count_i32(count: usize) -> Result<i32, TjsonError> {
    i32::try_from(count).map_err(|_| shape("a container too large"))
}

fn write_value(
    out: &mut dyn TOutputProtocol,
    kind: TType,
    value: &Value,
    depth: usize,
) -> Result<(), TjsonError> {
    if depth > MAX_DEPTH {
        return Err(shape("nested too deeply"));
    }
    let result = match kind {
        TType::Bool => out.write_bool(integer(value)? != 0),
        TType::I08 => out.write_i8(narrow(value)?),
        TType::I16 => out.write_i16(narrow(value)?),
        TType::I32 => out.write_i32(narrow(value)?),
        TType::I64 => out.write_i64(integer(value)?),
        TType::Double => out.write_double(double(value)?),
        TType::String => match value {
            Value::String(s) => out.write_string(s),
            other => return Err(shape(format!("{other} is not a string"))),
        },
        TType::Struct => {
            let fields = value
                .as_object()
                .ok_or_else(|| shape(format!("{value} is not a struct")))?;
            return write_struct(out, fields, depth + 1);
        }
        TType::List | TType::Set => {
            let elem = type_at(value, 0)?;
            let (items, count) = elements(value, 1)?;
            if items.len() != count {
                return Err(shape(format!(
                    "a container says {count} elements but holds {}",
                    items.len()
                )));
            }
            let size = count_i32(count)?;
            if kind == TType::List {
                out.write_list_begin(&TListIdentifier::new(elem, size))
            } else {
                out.write_set_begin(&TSetIdentifier::new(elem, size))
            }
            .map_err(thrift_err)?;
            for item in items {
                write_value(out, elem, item, depth + 1)?;
            }
            if kind == TType::List {
                out.write_list_end()
            } else {
                out.write_set_end()
            }
        }
        TType::Map => {
            let key = type_at(value, 0)?;
            let val = type_at(value, 1)?;
            let (rest, count) = elements(value, 2)?;
            let entries = match rest {
                [Value::Object(entries)] => entries,
                [] if count == 0 => &Map::new(),
                _ => return Err(shape("a map without its entries object")),
            };
            if entries.len() != count {
                return Err(shape(format!(
                    "a map says {count} entries but holds {}",
                    entries.len()
                )));
            }
            out.write_map_begin(&TMapIdentifier::new(key, val, count_i32(count)?))
                .map_err(thrift_err)?;
            for (k, v) in entries {
                write_value(out, key, &Value::String(k.clone()), depth + 1)?;
                write_value(out, val, v, depth + 1)?;
            }
            out.write_map_end()
        }
        other => return Err(shape(format!("type {other:?} cannot be a value"))),
    };
    result.map_err(thrift_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{sched, worker};

    /// A RunStatus as Go Scoot's worker code serialised it for the saga log (written by hand
    /// from the TJSON rules: every pointer field present, ids in order).
    const SCOOT_RUN_STATUS: &str = r#"{"1":{"i32":3},"2":{"str":"7"},"3":{"str":"http://localhost:10100/output/stdout_7"},"4":{"str":"http://localhost:10100/output/stderr_7"},"5":{"str":""},"6":{"i32":3},"7":{"str":"bs-fs-x--y"},"8":{"str":"job \"quoted\" ✓"},"9":{"str":"task1"},"10":{"str":"tag"}}"#;

    #[test]
    fn scoot_run_status() {
        let status: worker::RunStatus = from_tjson(SCOOT_RUN_STATUS.as_bytes()).unwrap();
        assert_eq!(status.status, worker::Status::COMPLETE);
        assert_eq!(status.run_id, "7");
        assert_eq!(
            status.out_uri.as_deref(),
            Some("http://localhost:10100/output/stdout_7")
        );
        assert_eq!(status.error.as_deref(), Some(""));
        assert_eq!(status.exit_code, Some(3));
        assert_eq!(status.job_id.as_deref(), Some("job \"quoted\" ✓"));
        assert_eq!(status.tag.as_deref(), Some("tag"));
    }

    #[test]
    fn containers_and_scalars() {
        let job = r#"{"1":{"str":"j"},"2":{"rec":{"2":{"lst":["rec",1,{"1":{"rec":{"1":{"lst":["str",2,"echo","hi"]},"2":{"map":["str","str",1,{"K":"V"}]},"3":{"i64":5000000000},"4":{"str":"snap"}}},"2":{"str":"t"}}]},"3":{"i32":1},"4":{"str":"tag"}}}}"#;
        let job: sched::Job = from_tjson(job.as_bytes()).unwrap();
        assert_eq!(job.id, "j");
        let def = job.job_definition;
        assert_eq!(def.priority, Some(1));
        let task = &def.tasks.unwrap()[0];
        assert_eq!(task.command.argv, ["echo", "hi"]);
        assert_eq!(task.command.timeout, Some(5_000_000_000));
        assert_eq!(
            task.command
                .env_vars
                .as_ref()
                .unwrap()
                .get("K")
                .map(String::as_str),
            Some("V")
        );
        let empty_map = r#"{"1":{"str":"j"},"2":{"rec":{"2":{"lst":["rec",1,{"1":{"rec":{"1":{"lst":["str",0]},"2":{"map":["str","str",0,{}]},"4":{"str":""}}}}]}}}}"#;
        assert!(from_tjson::<sched::Job>(empty_map.as_bytes()).is_ok());
    }

    #[test]
    fn bad_documents_are_refused() {
        for bad in [
            "",
            "[]",
            r#"{"x":{"i32":1}}"#,
            r#"{"1":{"int":1}}"#,
            r#"{"1":{"i32":1,"str":"a"}}"#,
            r#"{"1":{"i32":"many"}}"#,
            r#"{"1":{"i8":300}}"#,
            r#"{"1":{"lst":["str",3,"a"]}}"#,
            r#"{"1":{"map":["str","i32",1,{}]}}"#,
        ] {
            assert!(to_binary(bad.as_bytes()).is_err(), "{bad}");
        }
        // A well-formed document missing a required field does not decode.
        assert!(from_tjson::<worker::RunStatus>(br#"{"2":{"str":"1"}}"#).is_err());
        // Within serde_json's own nesting limit, beyond ours.
        let deep = format!("{}{{}}{}", r#"{"1":{"rec":"#.repeat(60), "}}".repeat(60));
        assert!(to_binary(deep.as_bytes()).is_err());
    }
}
