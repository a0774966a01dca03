//! Input limits for every RPC, read from the contracts and enforced once, before any handler.
//!
//! Every string field of every request is at most [`DEFAULT_MAX_CHARS`] characters unless its
//! comment in `proto/` says `At most N characters.`; every bytes field at most
//! [`DEFAULT_MAX_BYTES`]; every repeated field (and map) at most [`DEFAULT_MAX_ITEMS`] entries
//! unless its comment says `At most N entries.`; messages nest at most [`MAX_DEPTH`] deep; no
//! string holds a NUL character (Postgres text cannot store one).
//! [`InputLimitsLayer`] reads each request's encoded message against the method's input type
//! from [`omni_proto::FILE_DESCRIPTOR_SET`] (a wire-level walk: nothing is decoded twice into
//! Rust types) and answers a violation with `INVALID_ARGUMENT` naming every offending field as
//! handlers do (`lines[3].sku_id`), so no handler, and no database, sees oversized input. A new
//! RPC is covered the moment it is in the contract; the limits are documented where callers
//! read the contract, and the handlers keep their domain rules (at most 100 order lines, ...).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};

use http_body_util::BodyExt as _;
use prost::Message as _;
use prost::bytes::Buf as _;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorSet};

use crate::error::{Error, FieldViolation};

/// Characters a string field holds unless its comment allows more.
pub const DEFAULT_MAX_CHARS: usize = 256;
/// Bytes a bytes field holds.
pub const DEFAULT_MAX_BYTES: usize = 65_536;
/// Entries a repeated field or map holds unless its comment allows more.
pub const DEFAULT_MAX_ITEMS: usize = 1_000;
/// How deep messages may nest inside a request.
pub const MAX_DEPTH: usize = 32;
/// The largest request body read, framing included.
const MAX_BODY: usize = 4 * 1024 * 1024 + 5;

#[derive(Debug, Clone)]
struct Field {
    name: String,
    kind: FieldKind,
    repeated: bool,
    max_chars: usize,
    max_items: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum FieldKind {
    String,
    Bytes,
    Message(String),
    Other,
}

/// The request types of every Omni method, with their fields' limits.
#[derive(Debug, Default)]
pub struct Contracts {
    /// `/package.Service/Method` → fully qualified input type (no leading dot).
    methods: HashMap<String, String>,
    /// Fully qualified message name → field number → field.
    messages: HashMap<String, HashMap<u32, Field>>,
    /// The methods whose responses are streams.
    streaming: std::collections::HashSet<String>,
}

/// The contracts compiled into `omni-proto`.
pub fn contracts() -> &'static Contracts {
    static CONTRACTS: LazyLock<Contracts> = LazyLock::new(|| {
        Contracts::from_descriptor_set(omni_proto::FILE_DESCRIPTOR_SET)
            .expect("omni-proto's descriptor set decodes")
    });
    &CONTRACTS
}

/// The number in a comment's `At most N <unit>` (digits may be grouped with commas).
fn documented_limit(comment: &str, unit: &str) -> Option<usize> {
    let text = comment.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut rest = text.as_str();
    while let Some(at) = rest.find("At most ") {
        rest = &rest[at + "At most ".len()..];
        let number: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == ',')
            .collect();
        let after = rest[number.len()..].trim_start();
        if after.starts_with(unit)
            && let Ok(n) = number.replace(',', "").parse()
        {
            return Some(n);
        }
    }
    None
}

impl Contracts {
    pub fn from_descriptor_set(encoded: &[u8]) -> anyhow::Result<Self> {
        let set = FileDescriptorSet::decode(encoded)?;
        let mut contracts = Contracts::default();
        for file in &set.file {
            let package = file.package();
            let comments: HashMap<Vec<i32>, String> = file
                .source_code_info
                .iter()
                .flat_map(|info| &info.location)
                .map(|l| (l.path.clone(), l.leading_comments().to_owned()))
                .collect();
            for (i, message) in file.message_type.iter().enumerate() {
                contracts.add_message(package, message, vec![4, i as i32], &comments);
            }
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{package}.{}/{}", service.name(), method.name());
                    if method.server_streaming() {
                        contracts.streaming.insert(path.clone());
                    }
                    contracts
                        .methods
                        .insert(path, method.input_type().trim_start_matches('.').to_owned());
                }
            }
        }
        Ok(contracts)
    }

    fn add_message(
        &mut self,
        scope: &str,
        message: &DescriptorProto,
        path: Vec<i32>,
        comments: &HashMap<Vec<i32>, String>,
    ) {
        let name = format!("{scope}.{}", message.name());
        let mut fields = HashMap::new();
        for (i, f) in message.field.iter().enumerate() {
            let mut at = path.clone();
            at.extend([2, i as i32]);
            let comment = comments.get(&at).map(String::as_str).unwrap_or_default();
            let kind = match f.r#type() {
                Type::String => FieldKind::String,
                Type::Bytes => FieldKind::Bytes,
                Type::Message => FieldKind::Message(f.type_name().trim_start_matches('.').into()),
                _ => FieldKind::Other,
            };
            fields.insert(
                f.number() as u32,
                Field {
                    name: f.name().to_owned(),
                    kind,
                    repeated: f.label() == Label::Repeated,
                    max_chars: documented_limit(comment, "characters").unwrap_or(DEFAULT_MAX_CHARS),
                    max_items: documented_limit(comment, "entries").unwrap_or(DEFAULT_MAX_ITEMS),
                },
            );
        }
        self.messages.insert(name.clone(), fields);
        for (i, nested) in message.nested_type.iter().enumerate() {
            let mut at = path.clone();
            at.extend([3, i as i32]);
            self.add_message(&name, nested, at, comments);
        }
    }

    /// Every method's path, `/package.Service/Method`.
    pub fn methods(&self) -> impl Iterator<Item = &str> {
        self.methods.keys().map(String::as_str)
    }

    /// Whether the method answers with a stream.
    pub fn is_streaming(&self, path: &str) -> bool {
        self.streaming.contains(path)
    }

    /// The limits a request to `path` breaks; empty when it keeps them (or the method is not an
    /// Omni one). A message that does not parse is left to the handler's decoder.
    pub fn check(&self, path: &str, message: &[u8]) -> Vec<FieldViolation> {
        let mut violations = Vec::new();
        if let Some(input) = self.methods.get(path) {
            let _ = self.walk(input, message, "", 1, &mut violations);
        }
        violations
    }

    fn walk(
        &self,
        message: &str,
        mut buf: &[u8],
        prefix: &str,
        depth: usize,
        out: &mut Vec<FieldViolation>,
    ) -> Option<()> {
        if depth > MAX_DEPTH {
            out.push(FieldViolation::new(
                prefix.trim_end_matches('.'),
                format!("nests deeper than {MAX_DEPTH} messages"),
            ));
            return Some(());
        }
        let fields = self.messages.get(message)?;
        let mut counts: HashMap<u32, usize> = HashMap::new();
        while buf.has_remaining() {
            let key = prost::encoding::decode_varint(&mut buf).ok()?;
            let number = u32::try_from(key >> 3).ok()?;
            let wire = key & 7;
            let value: &[u8] = match wire {
                0 => {
                    prost::encoding::decode_varint(&mut buf).ok()?;
                    &[]
                }
                1 => {
                    (buf.len() >= 8).then_some(())?;
                    buf.advance(8);
                    &[]
                }
                5 => {
                    (buf.len() >= 4).then_some(())?;
                    buf.advance(4);
                    &[]
                }
                2 => {
                    let len =
                        usize::try_from(prost::encoding::decode_varint(&mut buf).ok()?).ok()?;
                    (buf.len() >= len).then_some(())?;
                    let (value, rest) = buf.split_at(len);
                    buf = rest;
                    value
                }
                _ => return None,
            };
            let Some(field) = fields.get(&number) else {
                continue;
            };
            let index = counts.entry(number).or_default();
            let name = if field.repeated {
                format!("{prefix}{}[{index}]", field.name)
            } else {
                format!("{prefix}{}", field.name)
            };
            *index += 1;
            if field.repeated && *index == field.max_items + 1 {
                out.push(FieldViolation::new(
                    format!("{prefix}{}", field.name),
                    format!("at most {} entries", field.max_items),
                ));
            }
            if wire != 2 {
                continue;
            }
            match &field.kind {
                FieldKind::String => match std::str::from_utf8(value) {
                    Ok(s) if s.chars().count() > field.max_chars => out.push(FieldViolation::new(
                        name,
                        format!("must be at most {} characters", field.max_chars),
                    )),
                    // Postgres text cannot hold U+0000, and no name, code or reference needs it.
                    Ok(s) if s.contains('\0') => {
                        out.push(FieldViolation::new(name, "must not contain NUL characters"));
                    }
                    Ok(_) => {}
                    Err(_) => out.push(FieldViolation::new(name, "must be UTF-8")),
                },
                FieldKind::Bytes if value.len() > DEFAULT_MAX_BYTES => out.push(
                    FieldViolation::new(name, format!("must be at most {DEFAULT_MAX_BYTES} bytes")),
                ),
                FieldKind::Message(inner) => {
                    self.walk(inner, value, &format!("{name}."), depth + 1, out)?;
                }
                FieldKind::Bytes | FieldKind::Other => {}
            }
        }
        Some(())
    }
}

/// Checks every request against [`contracts`] before the service sees it (health and
/// reflection pass untouched).
#[derive(Clone, Debug, Default)]
pub struct InputLimitsLayer;

impl<S> tower::Layer<S> for InputLimitsLayer {
    type Service = InputLimits<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InputLimits { inner }
    }
}

#[derive(Clone, Debug)]
pub struct InputLimits<S> {
    inner: S,
}

type Body = tonic::body::Body;

impl<S> tower::Service<http::Request<Body>> for InputLimits<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let contracts = contracts();
        if !contracts.methods.contains_key(request.uri().path()) {
            return Box::pin(self.inner.call(request));
        }
        // The service readied by poll_ready is the one to call; a clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let bytes = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(_) => {
                    return Ok(tonic::Status::resource_exhausted(
                        "the request is larger than 4 MiB or was cut off",
                    )
                    .into_http());
                }
            };
            let violations = frame_violations(contracts, parts.uri.path(), &bytes);
            if !violations.is_empty() {
                let status: tonic::Status = Error::InvalidArgument(violations).into();
                return Ok(status.into_http());
            }
            inner
                .call(http::Request::from_parts(
                    parts,
                    Body::new(http_body_util::Full::new(bytes)),
                ))
                .await
        })
    }
}

/// The violations of the uncompressed gRPC messages framed in `body`.
fn frame_violations(contracts: &Contracts, path: &str, body: &[u8]) -> Vec<FieldViolation> {
    let mut rest = body;
    let mut violations = Vec::new();
    while rest.len() >= 5 {
        let compressed = rest[0] == 1;
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let Some(message) = rest.get(5..5 + len) else {
            break;
        };
        if !compressed {
            violations.extend(contracts.check(path, message));
        }
        rest = &rest[5 + len..];
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;
    use omni_proto::omni::orders::v1 as orders;

    const PLACE: &str = "/omni.orders.v1.OrderService/PlaceOrder";

    #[test]
    fn limits_are_read_from_comments() {
        assert_eq!(
            documented_limit("Free text. At most 2,000 characters.", "characters"),
            Some(2000)
        );
        assert_eq!(documented_limit("At most 50 entries.", "characters"), None);
        assert_eq!(documented_limit("no limit said", "entries"), None);
    }

    #[test]
    fn every_method_of_the_contracts_is_known() {
        let c = contracts();
        assert!(c.methods().any(|m| m == PLACE));
        assert!(c.methods().count() > 100);
    }

    #[test]
    fn oversized_strings_are_named_by_their_path_and_others_pass() {
        let fine = orders::PlaceOrderRequest {
            channel_order_ref: "web-1001".into(),
            lines: vec![orders::OrderLineInput {
                sku_id: "é".repeat(DEFAULT_MAX_CHARS),
                quantity: 1,
            }],
            ..Default::default()
        };
        assert!(contracts().check(PLACE, &fine.encode_to_vec()).is_empty());

        let huge = orders::PlaceOrderRequest {
            channel_order_ref: "x".repeat(100_000),
            lines: vec![
                orders::OrderLineInput::default(),
                orders::OrderLineInput {
                    sku_id: "é".repeat(DEFAULT_MAX_CHARS + 1),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let fields: Vec<String> = contracts()
            .check(PLACE, &huge.encode_to_vec())
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(fields, ["channel_order_ref", "lines[1].sku_id"]);
    }

    #[test]
    fn too_many_entries_are_refused_once() {
        let many = orders::PlaceOrderRequest {
            coupon_codes: vec!["A".into(); DEFAULT_MAX_ITEMS + 5],
            ..Default::default()
        };
        let violations = contracts().check(PLACE, &many.encode_to_vec());
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].field, "coupon_codes");
    }

    #[test]
    fn nul_characters_are_refused() {
        let nul = orders::PlaceOrderRequest {
            channel_order_ref: "web\u{0}1".into(),
            ..Default::default()
        };
        let violations = contracts().check(PLACE, &nul.encode_to_vec());
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].field, "channel_order_ref");
    }

    #[test]
    fn garbage_is_left_to_the_decoder() {
        assert!(contracts().check(PLACE, &[0xff, 0xff, 0xff]).is_empty());
    }
}
