//! Who may act where, for every RPC of every contract: each RPC × each role it admits × a
//! caller in scope and one out of scope.
//!
//! The rows live in `orders.rs` (order-management and inventory) and `others.rs` (identity,
//! catalog, crm, performance, dead letters): per RPC, a [`Rule`] and, for every rule but
//! [`Rule::Shared`], a real request about records the test made in the e-shop channel and at
//! the Lyon store (an e-shop order picked up in Lyon, its return, a reservation, a transfer
//! from Lyon, a promotion, a ticket, ...). The test lists the RPCs from the contracts compiled
//! into `omni-proto`: an RPC without a row fails it. Every role the RPC admits (as
//! `authorization.policy` says) is tried twice, with the same request:
//! - in scope: the role limited to the e-shop channel and the Lyon store;
//! - out of scope: the same role limited to the livestream channel and the Villeurbanne store.
//!
//! The out-of-scope call comes first, so a change it was wrongly allowed to make is seen
//! before the in-scope call changes the record.

mod orders;
mod others;

use std::collections::BTreeMap;
use std::str::FromStr as _;
use std::time::Duration;

use omni_runtime::auth::{Role, Scope};
use omni_testkit::world::World;
use prost::bytes::{Buf as _, BufMut as _};
use tonic::Code;
use tonic::codegen::http;

/// How scope bears on an RPC.
pub enum Rule {
    /// Scope plays no part, for the reason given (catalog reads are shared by every channel,
    /// a customer is the same in every channel, admin-only, ...). Checked: a caller out of
    /// scope gets the answer an unlimited caller gets to the same empty request.
    Shared(&'static str),
    /// The caller out of scope is refused PERMISSION_DENIED; the one in scope is not.
    Denied(Vec<u8>),
    /// Both are answered; only the in-scope caller's answer holds the marker (an id), which
    /// the out-of-scope caller's list or report leaves out.
    Hidden(Vec<u8>, String),
    /// Only the record's maker (the in-scope channel app, which made it), an admin or a
    /// service acts on it: another channel app is refused PERMISSION_DENIED.
    Owner(Vec<u8>),
}

/// A request message, encoded.
pub fn req(message: impl prost::Message) -> Vec<u8> {
    message.encode_to_vec()
}

/// A fresh idempotency key.
pub fn key() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Which side of the scope a caller is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    In,
    Out,
}

/// The scope a caller of `role` has on `side`: a channel and a store, so that both the
/// channel rules and the store rules have something to refuse. (A scope limited to channels
/// alone reaches every store; the services' own tests try that shape.)
pub fn scope(w: &World, side: Side) -> Scope {
    let (channel, store) = match side {
        Side::In => (&w.eshop.id, &w.lyon),
        Side::Out => (&w.livestream.id, &w.villeurbanne),
    };
    Scope {
        channels: vec![channel.clone()],
        stores: vec![store.clone()],
    }
}

/// The one principal of `role` on `side` (the same id on every call, so what the in-scope
/// channel app makes is its own).
pub fn token(w: &World, role: Role, side: Side) -> String {
    let index = Role::ALL.iter().position(|r| *r == role).unwrap_or(0) as u128;
    let side_bit = if side == Side::In { 0 } else { 1 << 8 };
    omni_testkit::token_as(
        uuid::Uuid::from_u128(0x5c0e_0000_0000_7000_8000_0000_0000_0000 | side_bit | index),
        &[role],
        scope(w, side),
    )
}

/// Sends encoded requests and keeps the encoded answers.
#[derive(Debug, Clone, Copy, Default)]
struct Bytes;

impl tonic::codec::Codec for Bytes {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Bytes;
    type Decoder = Bytes;

    fn encoder(&mut self) -> Self::Encoder {
        Bytes
    }

    fn decoder(&mut self) -> Self::Decoder {
        Bytes
    }
}

impl tonic::codec::Encoder for Bytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Bytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

/// The service answering a method's package (dead letters: crm's, as any consumer's).
fn service<'a>(w: &'a World, method: &str) -> &'a omni_testkit::Service {
    match method.split('.').nth(1).unwrap_or("") {
        "identity" => &w.shop.identity,
        "catalog" => &w.shop.catalog,
        "inventory" => &w.shop.inventory,
        "orders" => &w.shop.orders,
        "performance" => &w.shop.performance,
        _ => &w.shop.crm,
    }
}

/// Calls `method` with `body` as the holder of `token`: the answer (a stream's first message,
/// or an empty one while it waits), or its status.
async fn call(w: &World, method: &str, token: &str, body: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(service(w, method).with_token(token));
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = http::uri::PathAndQuery::from_str(&format!("/{method}")).expect("a method path");
    let request = tonic::Request::new(body.to_vec());
    if omni_runtime::limits::contracts().is_streaming(&format!("/{method}")) {
        let mut stream = grpc
            .server_streaming(request, path, Bytes)
            .await?
            .into_inner();
        match tokio::time::timeout(Duration::from_secs(1), stream.message()).await {
            Ok(Ok(first)) => Ok(first.unwrap_or_default()),
            Ok(Err(status)) => Err(status),
            Err(_) => Ok(Vec::new()),
        }
    } else {
        Ok(grpc.unary(request, path, Bytes).await?.into_inner())
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    !needle.is_empty()
        && haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
}

/// A code no authorized caller may get: the caller was let in, or the service failed.
fn refused_as_caller(code: Code) -> bool {
    matches!(
        code,
        Code::PermissionDenied
            | Code::Unauthenticated
            | Code::Internal
            | Code::Unknown
            | Code::Unimplemented
    )
}

/// The roles `authorization.policy` admits per method.
fn policy() -> BTreeMap<String, Vec<Role>> {
    let text = include_str!("../authorization.policy");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let (method, roles) = l.split_once(char::is_whitespace)?;
            let roles = roles
                .trim()
                .split(',')
                .filter_map(|r| Role::ALL.iter().copied().find(|k| k.as_str() == r))
                .collect();
            Some((method.to_owned(), roles))
        })
        .collect()
}

/// What is wrong with `method`'s answers to `role` in and out of scope.
async fn check(w: &World, method: &str, role: Role, rule: &Rule) -> Option<String> {
    let who = role.as_str();
    let (inside, outside) = (token(w, role, Side::In), token(w, role, Side::Out));
    match rule {
        Rule::Shared(_) => {
            let unlimited = omni_testkit::role_token(&[role]);
            let want = call(w, method, &unlimited, &[])
                .await
                .err()
                .map(|s| s.code());
            let got = call(w, method, &outside, &[]).await.err().map(|s| s.code());
            (want != got).then(|| {
                format!(
                    "{method} as {who} (shared): out of scope {got:?}, unlimited {want:?} \
                     to the same empty request"
                )
            })
        }
        Rule::Denied(body) => {
            let out = call(w, method, &outside, body).await;
            if !matches!(&out, Err(s) if s.code() == Code::PermissionDenied) {
                return Some(format!(
                    "{method} as {who} out of scope: {:?}, not PERMISSION_DENIED",
                    out.map(|_| "OK")
                ));
            }
            match call(w, method, &inside, body).await {
                Err(s) if refused_as_caller(s.code()) => {
                    Some(format!("{method} as {who} in scope: {s:?}"))
                }
                _ => None,
            }
        }
        Rule::Hidden(body, marker) => {
            match call(w, method, &outside, body).await {
                Ok(answer) if contains(&answer, marker) => {
                    return Some(format!(
                        "{method} as {who} out of scope: the answer holds {marker}"
                    ));
                }
                Ok(_) => {}
                Err(s) => return Some(format!("{method} as {who} out of scope: {s:?}")),
            }
            match call(w, method, &inside, body).await {
                Ok(answer) if contains(&answer, marker) => None,
                Ok(_) => Some(format!(
                    "{method} as {who} in scope: the answer lacks {marker}"
                )),
                Err(s) => Some(format!("{method} as {who} in scope: {s:?}")),
            }
        }
        Rule::Owner(body) => {
            // Admins and services act on any; another channel app is refused.
            let stranger = if matches!(role, Role::Admin | Role::Service) {
                None
            } else {
                Some(outside)
            };
            if let Some(stranger) = stranger {
                let out = call(w, method, &stranger, body).await;
                if !matches!(&out, Err(s) if s.code() == Code::PermissionDenied) {
                    return Some(format!(
                        "{method} as another {who}: {:?}, not PERMISSION_DENIED",
                        out.map(|_| "OK")
                    ));
                }
            }
            match call(w, method, &inside, body).await {
                Err(s) if refused_as_caller(s.code()) => Some(format!(
                    "{method} as {who} (maker, admin or service): {s:?}"
                )),
                _ => None,
            }
        }
    }
}

#[tokio::test]
async fn every_rpc_keeps_every_role_to_its_scope() {
    let w = World::start().await;
    let order_fixtures = orders::setup(&w).await;
    let other_fixtures = others::setup(&w).await;
    let policy = policy();
    let mut methods: Vec<String> = omni_runtime::limits::contracts()
        .methods()
        .map(|m| m.trim_start_matches('/').to_owned())
        .collect();
    methods.sort();

    let mut problems = Vec::new();
    let mut tried = 0;
    for method in &methods {
        let Some(rule) = orders::rule(method, &w, &order_fixtures)
            .or_else(|| others::rule(method, &w, &other_fixtures))
        else {
            problems.push(format!("{method}: no row in the scope table"));
            continue;
        };
        for role in policy.get(method).into_iter().flatten() {
            tried += 1;
            if let Some(problem) = check(&w, method, *role, &rule).await {
                problems.push(problem);
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {tried} cases:\n{}",
        problems.len(),
        problems.join("\n")
    );
}
