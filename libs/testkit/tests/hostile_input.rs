//! Hostile input to every RPC of every contract, through gRPC, as an admin (the caller that
//! reaches furthest).
//!
//! Messages are generated from each method's request type in the contracts: every field gets
//! values a careless or malicious client sends — empty, blank and multi-byte strings, strings
//! just over and far over their documented limit, deeply nested rule text, negative and extreme
//! numbers, NaN, too many repeated entries — in a fixed-seed random mix (`OMNI_FUZZ_SEED`
//! changes it, `OMNI_FUZZ_CASES` the count). Every answer must be a caller error the contract
//! names (INVALID_ARGUMENT with field details, NOT_FOUND, FAILED_PRECONDITION, ...) or an
//! answer to a read; never INTERNAL, UNKNOWN or a dropped call (a panic); every service still
//! serves afterwards; and a service that refused every write it was sent holds exactly the rows
//! it held before.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr as _;
use std::time::Duration;

use omni_testkit::{OrderClocks, Service, Shop};
use prost::Message as _;
use prost::bytes::{Buf, BufMut};
use prost::encoding::{DecodeContext, WireType, encode_varint};
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorSet};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::Code;
use tonic::codegen::http;

/// An already encoded request.
#[derive(Debug, Default, Clone)]
struct Raw(Vec<u8>);

impl prost::Message for Raw {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

struct Schema {
    messages: HashMap<String, DescriptorProto>,
    /// `/package.Service/Method` → (input type, streaming answer).
    methods: BTreeMap<String, (String, bool)>,
}

impl Schema {
    fn load() -> Schema {
        let set = FileDescriptorSet::decode(omni_proto::FILE_DESCRIPTOR_SET).expect("descriptors");
        let mut messages = HashMap::new();
        let mut methods = BTreeMap::new();
        fn add(scope: &str, m: &DescriptorProto, out: &mut HashMap<String, DescriptorProto>) {
            let name = format!("{scope}.{}", m.name());
            for nested in &m.nested_type {
                add(&name, nested, out);
            }
            out.insert(name, m.clone());
        }
        for file in &set.file {
            for m in &file.message_type {
                add(file.package(), m, &mut messages);
            }
            for s in &file.service {
                for m in &s.method {
                    methods.insert(
                        format!("/{}.{}/{}", file.package(), s.name(), m.name()),
                        (
                            m.input_type().trim_start_matches('.').to_owned(),
                            m.server_streaming(),
                        ),
                    );
                }
            }
        }
        Schema { messages, methods }
    }

    fn generate(&self, message: &str, rng: &mut StdRng, depth: usize, out: &mut Vec<u8>) {
        let Some(m) = self.messages.get(message) else {
            return;
        };
        for f in &m.field {
            if !rng.gen_bool(0.75) {
                continue;
            }
            // Too many entries at the top level; a few at every level below.
            let count = if f.label() == Label::Repeated {
                *[0usize, 1, 2, 3, 1001]
                    .get(rng.gen_range(0..if depth == 0 { 5 } else { 4 }))
                    .unwrap_or(&1)
            } else {
                1
            };
            let number = f.number() as u64;
            for _ in 0..count {
                match f.r#type() {
                    Type::String => {
                        encode_varint(number << 3 | 2, out);
                        let s = hostile_string(rng);
                        encode_varint(s.len() as u64, out);
                        out.extend_from_slice(s.as_bytes());
                    }
                    Type::Bytes => {
                        encode_varint(number << 3 | 2, out);
                        let len = rng.gen_range(0..64);
                        encode_varint(len as u64, out);
                        out.extend((0..len).map(|_| rng.r#gen::<u8>()));
                    }
                    Type::Message | Type::Group => {
                        if depth >= 8 {
                            continue;
                        }
                        let mut inner = Vec::new();
                        self.generate(
                            f.type_name().trim_start_matches('.'),
                            rng,
                            depth + 1,
                            &mut inner,
                        );
                        encode_varint(number << 3 | 2, out);
                        encode_varint(inner.len() as u64, out);
                        out.extend_from_slice(&inner);
                    }
                    Type::Double | Type::Fixed64 | Type::Sfixed64 => {
                        encode_varint(number << 3 | 1, out);
                        let v =
                            [f64::NAN, f64::INFINITY, -1e300, -0.5, 0.0, 1e18][rng.gen_range(0..6)];
                        out.extend_from_slice(&v.to_le_bytes());
                    }
                    Type::Float | Type::Fixed32 | Type::Sfixed32 => {
                        encode_varint(number << 3 | 5, out);
                        let v =
                            [f32::NAN, f32::NEG_INFINITY, -1.0, 0.0, 3.4e38][rng.gen_range(0..5)];
                        out.extend_from_slice(&v.to_le_bytes());
                    }
                    _ => {
                        encode_varint(number << 3, out);
                        let v: i64 = [
                            i64::MIN,
                            i64::from(i32::MIN),
                            -1,
                            0,
                            1,
                            7,
                            10_001,
                            i64::from(i32::MAX),
                            i64::MAX,
                        ][rng.gen_range(0..9)];
                        encode_varint(v as u64, out);
                    }
                }
            }
        }
    }
}

fn hostile_string(rng: &mut StdRng) -> String {
    match rng.gen_range(0..12) {
        0 => String::new(),
        1 => "   ".to_owned(),
        2 => "é漢字🙂".repeat(rng.gen_range(1..80)),
        3 => "x".repeat(257),
        4 => "y".repeat(100_000),
        5 => "not ".repeat(1_000),
        6 => "(".repeat(4_000),
        7 => "-1".to_owned(),
        8 => "\u{0}\u{202e}'; DROP TABLE orders; --".to_owned(),
        9 => uuid::Uuid::now_v7().to_string(),
        10 => "O-2612-00001-0".to_owned(),
        _ => (0..rng.gen_range(1..40))
            .map(|_| char::from_u32(rng.gen_range(0x20..0x2FFF)).unwrap_or('?'))
            .collect(),
    }
}

/// Methods whose name says they only read.
fn reads(method: &str) -> bool {
    let name = method.rsplit('/').next().unwrap_or("");
    [
        "Get",
        "List",
        "Watch",
        "Check",
        "Search",
        "Quote",
        "Preview",
        "Find",
        "Summarize",
        "Analyze",
        "Evaluate",
        "Suggest",
        "BatchGet",
        "BatchQuote",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

fn services<'a>(shop: &'a Shop, path: &str) -> Option<&'a Service> {
    match path.trim_start_matches('/').split('.').nth(1)? {
        "identity" => Some(&shop.identity),
        "catalog" => Some(&shop.catalog),
        "inventory" => Some(&shop.inventory),
        "orders" => Some(&shop.orders),
        "crm" => Some(&shop.crm),
        "performance" => Some(&shop.performance),
        "events" => Some(&shop.crm),
        _ => None,
    }
}

/// The largest body sent: a little over the services' 4 MiB request limit.
const MAX_BODY: usize = 5 * 1024 * 1024;

/// Far beyond any answer to bad input; a call that takes longer hangs (and is a problem).
const CALL_LIMIT: Duration = Duration::from_secs(10);

async fn call(svc: &Service, path: &str, streaming: bool, body: Vec<u8>) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(svc.admin());
    if grpc.ready().await.is_err() {
        return tonic::Status::unavailable("not ready");
    }
    let path = http::uri::PathAndQuery::from_str(path).expect("a method path");
    let codec = tonic_prost::ProstCodec::<Raw, ()>::default();
    let request = tonic::Request::new(Raw(body));
    let answered = tokio::time::timeout(CALL_LIMIT, async {
        if streaming {
            match grpc.server_streaming(request, path, codec).await {
                Ok(response) => {
                    let mut stream = response.into_inner();
                    match tokio::time::timeout(Duration::from_millis(300), stream.message()).await {
                        Ok(Err(status)) => Err(status),
                        Ok(Ok(_)) | Err(_) => Ok(()),
                    }
                }
                Err(status) => Err(status),
            }
        } else {
            grpc.unary(request, path, codec).await.map(|_| ())
        }
    })
    .await
    .unwrap_or_else(|_| {
        Err(tonic::Status::deadline_exceeded(format!(
            "no answer within {CALL_LIMIT:?}"
        )))
    });
    answered.err().unwrap_or_else(|| tonic::Status::ok(""))
}

/// Exact row counts of every table of the service's database.
async fn rows(svc: &Service) -> BTreeMap<String, i64> {
    let db = svc.db().await.expect("db");
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
    )
    .fetch_all(&db)
    .await
    .expect("tables");
    let mut counts = BTreeMap::new();
    for t in tables {
        let n: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM \"{t}\"")))
                .fetch_one(&db)
                .await
                .expect("count");
        counts.insert(t, n);
    }
    db.close().await;
    counts
}

#[tokio::test]
async fn hostile_messages_to_every_rpc_are_refused_cleanly_and_write_nothing() {
    let seed: u64 = std::env::var("OMNI_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_206);
    let cases: usize = std::env::var("OMNI_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let schema = Schema::load();
    let shop = Shop::start_with(OrderClocks::default())
        .await
        .expect("shop");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut problems = Vec::new();
    let all = [
        &shop.identity,
        &shop.catalog,
        &shop.inventory,
        &shop.orders,
        &shop.crm,
        &shop.performance,
    ];
    let mut before = Vec::new();
    for svc in all {
        before.push(rows(svc).await);
    }
    let mut writes_accepted: Vec<String> = Vec::new();
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    for (method, (input, streaming)) in &schema.methods {
        let Some(svc) = services(&shop, method) else {
            continue;
        };
        for case in 0..cases {
            let mut body = Vec::new();
            schema.generate(input, &mut rng, 0, &mut body);
            // Bodies just over the 4 MiB request limit are fair; gigabytes only test the client.
            while body.len() > MAX_BODY {
                body.clear();
                schema.generate(input, &mut rng, 0, &mut body);
            }
            let status = call(svc, method, *streaming, body).await;
            *codes.entry(format!("{:?}", status.code())).or_default() += 1;
            match status.code() {
                Code::Ok if reads(method) => {}
                Code::Ok => writes_accepted.push(format!("{method} (case {case})")),
                Code::InvalidArgument => {
                    let details = tonic_types::StatusExt::get_error_details(&status);
                    if details
                        .bad_request()
                        .is_none_or(|b| b.field_violations.is_empty())
                    {
                        problems.push(format!(
                            "{method} (case {case}): INVALID_ARGUMENT without field details: {}",
                            status.message()
                        ));
                    }
                }
                Code::NotFound
                | Code::FailedPrecondition
                | Code::AlreadyExists
                | Code::OutOfRange
                | Code::ResourceExhausted
                | Code::Aborted => {}
                // A made-up credential is what Authenticate exists to refuse.
                Code::Unauthenticated if method.ends_with("/Authenticate") => {}
                other => problems.push(format!(
                    "{method} (case {case}): {other:?}: {}",
                    status.message()
                )),
            }
        }
    }
    // Everyone still serves.
    for svc in all {
        if let Err(e) = svc
            .wait_for(tonic_health::pb::health_check_response::ServingStatus::Serving)
            .await
        {
            problems.push(format!("a service stopped serving: {e}"));
        }
    }
    for (svc, before) in all.iter().zip(&before) {
        let name = svc.name;
        let wrote = writes_accepted.iter().any(|m| {
            services(&shop, m.split(' ').next().unwrap_or(""))
                .is_some_and(|s| std::ptr::eq(s, *svc))
        });
        if !wrote {
            let after = rows(svc).await;
            if &after != before {
                let changed: Vec<String> = after
                    .iter()
                    .filter(|(t, n)| before.get(*t) != Some(n))
                    .map(|(t, n)| format!("{t}: {:?} -> {n}", before.get(t)))
                    .collect();
                problems.push(format!(
                    "{name} wrote while refusing everything: {changed:?}"
                ));
            }
        }
    }
    eprintln!("seed {seed}, {cases} cases per RPC; answers: {codes:?}");
    eprintln!("writes that accepted generated input: {writes_accepted:?}");
    assert!(
        problems.is_empty(),
        "seed {seed}: {} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}
