//! Any Omni contract message as JSON, for `--json`: the message is encoded and walked field by
//! field against the descriptor set `omni-proto` embeds, so every command prints exactly what
//! the service answered without a hand-written mapping per message.
//!
//! The shape follows the proto3 JSON mapping (lowerCamelCase keys, enum values by name,
//! `Timestamp` as RFC 3339) with two conveniences for scripts: 64-bit integers are JSON numbers
//! rather than strings, and every scalar, enum and repeated field is present even when it holds
//! its default. Unset messages, members of an unset `oneof` and unset `optional` fields are left
//! out.

use std::collections::HashMap;
use std::sync::OnceLock;

use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, EnumDescriptorProto, FieldDescriptorProto, FileDescriptorSet};
use serde_json::{Map, Value};

/// Message and enum descriptors by fully qualified name, without the leading dot.
struct Registry {
    messages: HashMap<String, DescriptorProto>,
    enums: HashMap<String, EnumDescriptorProto>,
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut registry = Registry {
            messages: HashMap::new(),
            enums: HashMap::new(),
        };
        // The set is produced by our own build script; were it unreadable, every message would
        // simply print as an empty object, which the tests catch.
        let set = FileDescriptorSet::decode(omni_proto::FILE_DESCRIPTOR_SET).unwrap_or_default();
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for message in file.message_type {
                registry.add_message(&package, message);
            }
            for e in file.enum_type {
                registry
                    .enums
                    .insert(qualify(&package, e.name()), e.clone());
            }
        }
        registry
    })
}

impl Registry {
    fn add_message(&mut self, scope: &str, message: DescriptorProto) {
        let name = qualify(scope, message.name());
        for nested in &message.nested_type {
            self.add_message(&name, nested.clone());
        }
        for e in &message.enum_type {
            self.enums.insert(qualify(&name, e.name()), e.clone());
        }
        self.messages.insert(name, message);
    }
}

fn qualify(scope: &str, name: &str) -> String {
    if scope.is_empty() {
        name.to_owned()
    } else {
        format!("{scope}.{name}")
    }
}

/// `message` (of the proto type `type_name`, e.g. `omni.orders.v1.Order`) as JSON.
pub fn to_json<M: Message>(message: &M, type_name: &str) -> Value {
    decode_message(&message.encode_to_vec(), type_name)
}

/// `items` of the proto type `type_name` as a JSON array.
pub fn list_to_json<M: Message>(items: &[M], type_name: &str) -> Value {
    Value::Array(items.iter().map(|m| to_json(m, type_name)).collect())
}

fn decode_message(bytes: &[u8], type_name: &str) -> Value {
    match type_name {
        "google.protobuf.Timestamp" => return timestamp(bytes),
        "google.protobuf.Duration" => return duration(bytes),
        _ => {}
    }
    let Some(descriptor) = registry().messages.get(type_name) else {
        return Value::Null;
    };
    let mut seen: HashMap<i32, Value> = HashMap::new();
    let mut reader = Reader { bytes, at: 0 };
    while let Some((number, wire)) = reader.key() {
        let Some(field) = descriptor.field.iter().find(|f| f.number() == number) else {
            if !reader.skip(wire) {
                break;
            }
            continue;
        };
        let Some(values) = reader.values(field, wire) else {
            break;
        };
        if field.label() == Label::Repeated {
            let slot = seen
                .entry(number)
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(items) = slot {
                items.extend(values);
            }
        } else if let Some(value) = values.into_iter().last() {
            seen.insert(number, value);
        }
    }

    let mut object = Map::new();
    for field in &descriptor.field {
        let key = camel(field.name());
        let value = match seen.remove(&field.number()) {
            Some(value) => {
                if is_map(field) {
                    map_entries(value)
                } else {
                    value
                }
            }
            None => match default_value(field) {
                Some(value) => value,
                None => continue,
            },
        };
        object.insert(key, value);
    }
    Value::Object(object)
}

fn is_map(field: &FieldDescriptorProto) -> bool {
    field.label() == Label::Repeated
        && field.r#type() == Type::Message
        && registry()
            .messages
            .get(type_of(field))
            .and_then(|m| m.options.as_ref())
            .is_some_and(|o| o.map_entry())
}

/// A map field's decoded entries (`{"key": .., "value": ..}` objects) as one object.
fn map_entries(entries: Value) -> Value {
    let mut object = Map::new();
    if let Value::Array(entries) = entries {
        for entry in entries {
            let key = match entry.get("key") {
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            };
            object.insert(key, entry.get("value").cloned().unwrap_or(Value::Null));
        }
    }
    Value::Object(object)
}

fn default_value(field: &FieldDescriptorProto) -> Option<Value> {
    if is_map(field) {
        return Some(Value::Object(Map::new()));
    }
    if field.label() == Label::Repeated {
        return Some(Value::Array(Vec::new()));
    }
    if field.proto3_optional() || field.oneof_index.is_some() {
        return None;
    }
    Some(match field.r#type() {
        Type::Message | Type::Group => return None,
        Type::String | Type::Bytes => Value::String(String::new()),
        Type::Bool => Value::Bool(false),
        Type::Double | Type::Float => serde_json::json!(0.0),
        Type::Enum => enum_name(type_of(field), 0),
        _ => serde_json::json!(0),
    })
}

fn type_of(field: &FieldDescriptorProto) -> &str {
    field.type_name().trim_start_matches('.')
}

fn enum_name(type_name: &str, number: i32) -> Value {
    registry()
        .enums
        .get(type_name)
        .and_then(|e| e.value.iter().find(|v| v.number() == number))
        .map_or_else(
            || Value::from(number),
            |v| Value::String(v.name().to_owned()),
        )
}

/// `snake_case` to `lowerCamelCase`, as protobuf's JSON names are formed.
fn camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn timestamp(bytes: &[u8]) -> Value {
    let (seconds, nanos) = seconds_nanos(bytes);
    chrono::DateTime::from_timestamp(seconds, u32::try_from(nanos).unwrap_or(0))
        .map_or(Value::Null, |t| {
            Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        })
}

fn duration(bytes: &[u8]) -> Value {
    let (seconds, nanos) = seconds_nanos(bytes);
    let total = seconds as f64 + f64::from(nanos) / 1e9;
    Value::String(format!("{total}s"))
}

fn seconds_nanos(bytes: &[u8]) -> (i64, i32) {
    let mut reader = Reader { bytes, at: 0 };
    let (mut seconds, mut nanos) = (0i64, 0i32);
    while let Some((number, wire)) = reader.key() {
        match (number, wire) {
            (1, 0) => seconds = reader.varint().unwrap_or(0) as i64,
            (2, 0) => nanos = reader.varint().unwrap_or(0) as i32,
            _ => {
                if !reader.skip(wire) {
                    break;
                }
            }
        }
    }
    (seconds, nanos)
}

/// A cursor over protobuf wire-format bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.bytes.get(self.at)?;
            self.at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let slice = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(slice)
    }

    fn key(&mut self) -> Option<(i32, u8)> {
        if self.at >= self.bytes.len() {
            return None;
        }
        let key = self.varint()?;
        Some((i32::try_from(key >> 3).ok()?, (key & 7) as u8))
    }

    fn skip(&mut self, wire: u8) -> bool {
        match wire {
            0 => self.varint().is_some(),
            1 => self.take(8).is_some(),
            2 => self
                .varint()
                .and_then(|n| self.take(usize::try_from(n).ok()?))
                .is_some(),
            5 => self.take(4).is_some(),
            _ => false,
        }
    }

    /// The value(s) of one occurrence of `field`: a packed repeated field yields several.
    fn values(&mut self, field: &FieldDescriptorProto, wire: u8) -> Option<Vec<Value>> {
        let kind = field.r#type();
        let length_delimited = matches!(kind, Type::String | Type::Bytes | Type::Message);
        if wire == 2 && !length_delimited {
            let n = usize::try_from(self.varint()?).ok()?;
            let mut packed = Reader {
                bytes: self.take(n)?,
                at: 0,
            };
            let mut values = Vec::new();
            while packed.at < packed.bytes.len() {
                values.push(packed.scalar(field, kind)?);
            }
            return Some(values);
        }
        Some(vec![self.scalar(field, kind)?])
    }

    fn scalar(&mut self, field: &FieldDescriptorProto, kind: Type) -> Option<Value> {
        Some(match kind {
            Type::Double => Value::from(f64::from_le_bytes(self.take(8)?.try_into().ok()?)),
            Type::Float => Value::from(f64::from(f32::from_le_bytes(
                self.take(4)?.try_into().ok()?,
            ))),
            Type::Fixed64 => Value::from(u64::from_le_bytes(self.take(8)?.try_into().ok()?)),
            Type::Sfixed64 => Value::from(i64::from_le_bytes(self.take(8)?.try_into().ok()?)),
            Type::Fixed32 => Value::from(u32::from_le_bytes(self.take(4)?.try_into().ok()?)),
            Type::Sfixed32 => Value::from(i32::from_le_bytes(self.take(4)?.try_into().ok()?)),
            Type::Int64 => Value::from(self.varint()? as i64),
            Type::Uint64 => Value::from(self.varint()?),
            Type::Int32 => Value::from(self.varint()? as i64 as i32),
            Type::Uint32 => Value::from(self.varint()? as u32),
            Type::Sint32 | Type::Sint64 => {
                let v = self.varint()?;
                Value::from(((v >> 1) as i64) ^ -((v & 1) as i64))
            }
            Type::Bool => Value::Bool(self.varint()? != 0),
            Type::Enum => enum_name(type_of(field), self.varint()? as i64 as i32),
            Type::String => {
                let n = usize::try_from(self.varint()?).ok()?;
                Value::String(String::from_utf8_lossy(self.take(n)?).into_owned())
            }
            Type::Bytes => {
                let n = usize::try_from(self.varint()?).ok()?;
                Value::Array(self.take(n)?.iter().map(|b| Value::from(*b)).collect())
            }
            Type::Message => {
                let n = usize::try_from(self.varint()?).ok()?;
                decode_message(self.take(n)?, type_of(field))
            }
            Type::Group => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use omni_proto::common::{ChannelKind, Money};
    use omni_proto::omni::orders::v1 as pb;

    use super::*;

    #[test]
    fn an_order_prints_with_camel_case_keys_enum_names_and_defaults() {
        let order = pb::Order {
            id: "o-1".into(),
            channel_kind: ChannelKind::Livestream as i32,
            status: pb::OrderStatus::Confirmed as i32,
            total: Some(Money {
                minor_units: 12_345_678_901,
                currency: "EUR".into(),
            }),
            lines: vec![pb::OrderLine {
                quantity: 3,
                ..Default::default()
            }],
            placed_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            ..Default::default()
        };
        let json = to_json(&order, "omni.orders.v1.Order");
        assert_eq!(json["id"], "o-1");
        assert_eq!(json["channelKind"], "CHANNEL_KIND_LIVESTREAM");
        assert_eq!(json["status"], "ORDER_STATUS_CONFIRMED");
        assert_eq!(json["total"]["minorUnits"], 12_345_678_901i64);
        assert_eq!(json["lines"][0]["quantity"], 3);
        assert_eq!(json["lines"][0]["returnedQuantity"], 0);
        assert_eq!(json["placedAt"], "2023-11-14T22:13:20Z");
        assert_eq!(json["customerId"], "");
        assert_eq!(json["coupons"], serde_json::json!([]));
        assert!(json.get("payment").is_none());
    }

    #[test]
    fn maps_and_optional_fields_follow_the_mapping() {
        let sku = omni_proto::omni::catalog::v1::Sku {
            variant_attributes: [("size".to_owned(), "M".to_owned())].into(),
            ..Default::default()
        };
        let json = to_json(&sku, "omni.catalog.v1.Sku");
        assert_eq!(json["variantAttributes"]["size"], "M");

        let stats = omni_proto::omni::performance::v1::VariantStats {
            variant: "b".into(),
            conversion_rate: Some(-0.25),
            ..Default::default()
        };
        let json = to_json(&stats, "omni.performance.v1.VariantStats");
        assert_eq!(json["conversionRate"], -0.25);
        assert!(json.get("meanOrderValue").is_none());
    }
}
