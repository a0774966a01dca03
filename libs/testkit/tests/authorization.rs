//! Who may call what, for every RPC of every contract.
//!
//! `authorization.policy` holds one row per RPC: the roles that may call it (or `public`). The
//! test reads the RPCs from the contracts compiled into `omni-proto`, so an RPC without a row
//! (a new one) or a row without an RPC fails it. Each RPC is then called on the running service
//! without a token, and with an unscoped token of every role, with an empty request:
//! - without a token: UNAUTHENTICATED, unless the row says `public`;
//! - a role the row leaves out: PERMISSION_DENIED (roles are checked before anything else);
//! - a role the row names: anything but PERMISSION_DENIED, UNAUTHENTICATED, UNIMPLEMENTED,
//!   INTERNAL or UNKNOWN (an empty request is refused as bad input, or answered).
//!
//! Scope (the channels and stores a caller is limited to) is checked for every RPC by
//! `tests/scope/`, on real orders, reservations, promotions and the rest.
//!
//! After a reviewed change of policy, `OMNI_WRITE_POLICY=1` rewrites the file from what the
//! services answer; review the diff before committing it.

use std::collections::BTreeMap;
use std::str::FromStr as _;
use std::time::Duration;

use omni_runtime::auth::Role;
use omni_testkit::{OrderClocks, Service, Shop};
use tonic::Code;
use tonic::codegen::{Body, Bytes, StdError, http};

const POLICY_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/authorization.policy");

/// The services answering a method's package.
fn services<'a>(shop: &'a Shop, path: &str) -> Vec<&'a Service> {
    let package = path.trim_start_matches('/').split('.').nth(1).unwrap_or("");
    match package {
        "identity" => vec![&shop.identity],
        "catalog" => vec![&shop.catalog],
        "inventory" => vec![&shop.inventory],
        "orders" => vec![&shop.orders],
        "crm" => vec![&shop.crm],
        "performance" => vec![&shop.performance],
        // Every service with event consumers serves its dead letters.
        "events" => vec![&shop.inventory, &shop.orders, &shop.crm, &shop.performance],
        _ => vec![],
    }
}

/// The status an empty request to `path` gets (OK for a stream that opened).
async fn call<T>(channel: T, path: &str, streaming: bool) -> Code
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<StdError>,
    T::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<StdError> + Send,
{
    let mut grpc = tonic::client::Grpc::new(channel);
    if grpc.ready().await.is_err() {
        return Code::Unavailable;
    }
    let path = http::uri::PathAndQuery::from_str(path).expect("a method path");
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    if streaming {
        match grpc
            .server_streaming(tonic::Request::new(()), path, codec)
            .await
        {
            Ok(response) => {
                let mut stream = response.into_inner();
                match tokio::time::timeout(Duration::from_secs(1), stream.message()).await {
                    Ok(Err(status)) => status.code(),
                    // A first message, or a stream waiting for one: the call was accepted.
                    Ok(Ok(_)) | Err(_) => Code::Ok,
                }
            }
            Err(status) => status.code(),
        }
    } else {
        match grpc.unary(tonic::Request::new(()), path, codec).await {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        }
    }
}

/// What the running services allow: per method, `public` or the roles not denied.
async fn observe(shop: &Shop, methods: &[String]) -> (BTreeMap<String, String>, Vec<String>) {
    let contracts = omni_runtime::limits::contracts();
    let mut observed = BTreeMap::new();
    let mut faults = Vec::new();
    for method in methods {
        let streaming = contracts.is_streaming(method);
        let mut rows: Vec<String> = Vec::new();
        for svc in services(shop, method) {
            let anonymous = call(svc.channel(), method, streaming).await;
            if anonymous != Code::Unauthenticated {
                rows.push("public".to_owned());
                continue;
            }
            let mut allowed = Vec::new();
            for role in Role::ALL {
                let code = call(svc.as_roles(&[role]), method, streaming).await;
                match code {
                    Code::PermissionDenied => {}
                    Code::Unauthenticated
                    | Code::Unimplemented
                    | Code::Internal
                    | Code::Unknown => {
                        faults.push(format!("{method} as {}: {code:?}", role.as_str()));
                    }
                    _ => allowed.push(role.as_str()),
                }
            }
            rows.push(if allowed.is_empty() {
                "nobody".to_owned()
            } else {
                allowed.join(",")
            });
        }
        rows.dedup();
        if rows.len() != 1 {
            faults.push(format!(
                "{method}: the services serving it disagree: {rows:?}"
            ));
        }
        observed.insert(method.clone(), rows.join(" | "));
    }
    (observed, faults)
}

fn render(policy: &BTreeMap<String, String>) -> String {
    let width = policy.keys().map(String::len).max().unwrap_or(0);
    let mut out = String::from(
        "# Who may call each RPC: `public` (no token), or the roles allowed (comma separated).\n\
         # Read by libs/testkit/tests/authorization.rs against every contract and every service.\n",
    );
    for (method, roles) in policy {
        out.push_str(&format!("{method:width$}  {roles}\n"));
    }
    out
}

fn parse(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let (method, roles) = l.split_once(char::is_whitespace)?;
            Some((method.to_owned(), roles.trim().to_owned()))
        })
        .collect()
}

#[tokio::test]
async fn every_rpc_answers_every_role_as_the_policy_says() {
    let shop = Shop::start_with(OrderClocks::default())
        .await
        .expect("the shop starts");
    let mut methods: Vec<String> = omni_runtime::limits::contracts()
        .methods()
        .map(|m| m.trim_start_matches('/').to_owned())
        .collect();
    methods.sort();
    let paths: Vec<String> = methods.iter().map(|m| format!("/{m}")).collect();
    let (observed, faults) = observe(&shop, &paths).await;
    let observed: BTreeMap<String, String> = observed
        .into_iter()
        .map(|(m, r)| (m.trim_start_matches('/').to_owned(), r))
        .collect();

    if std::env::var_os("OMNI_WRITE_POLICY").is_some() {
        std::fs::write(POLICY_FILE, render(&observed)).expect("writing the policy");
    }
    let policy = parse(&std::fs::read_to_string(POLICY_FILE).expect("the policy file"));

    let mut problems = faults;
    for method in &methods {
        match (policy.get(method), observed.get(method)) {
            (None, _) => problems.push(format!("{method}: no row in the policy")),
            (Some(want), Some(got)) if want != got => problems.push(format!(
                "{method}: policy says {want}, the service allows {got}"
            )),
            _ => {}
        }
    }
    for method in policy.keys() {
        if !methods.contains(method) {
            problems.push(format!("{method}: a row for an RPC no contract has"));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}
