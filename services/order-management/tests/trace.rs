//! One trace across every service, read back from a real OTLP receiver.
//!
//! The test process exports its spans the way a deployed service does (the OTLP/gRPC exporter
//! behind `omni_runtime::telemetry`), to a collector endpoint served by this test. A
//! buy-online-pick-up-in-store order with a coupon is placed; the trace of that one call must
//! hold order-management's span, the identity, catalog, inventory and crm spans it caused, and
//! the crm and performance consumers' spans for its OrderPlaced event, which carried the trace
//! context through Postgres and Redis. Losing the context at any hop splits the trace and fails
//! the test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

#[path = "orders/support.rs"]
#[allow(dead_code)]
mod support;

use omni_proto::omni::orders::v1 as pb;
use support::*;

/// A span as the collector received it.
#[derive(Debug, Clone)]
struct Received {
    trace_id: Vec<u8>,
    name: String,
    /// The `service` attribute of RPC spans, the `consumer` attribute of event spans.
    service: String,
    consumer: String,
}

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                for span in scope.spans {
                    let attribute = |key: &str| {
                        span.attributes
                            .iter()
                            .find(|a| a.key == key)
                            .and_then(|a| a.value.as_ref())
                            .and_then(|v| match &v.value {
                                Some(Value::StringValue(s)) => Some(s.clone()),
                                _ => None,
                            })
                            .unwrap_or_default()
                    };
                    spans.push(Received {
                        trace_id: span.trace_id.clone(),
                        name: span.name.clone(),
                        service: attribute("service"),
                        consumer: attribute("consumer"),
                    });
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_covers_an_order_across_every_service_and_its_events() {
    // The receiver, on a free loopback port.
    let collector = Collector::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let server = collector.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(server))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });

    // The services' real exporter, pointed at it.
    omni_testkit::disable_span_capture();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(&endpoint)
        .build()
        .unwrap();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .build();
    omni_runtime::telemetry::install(&provider, "omni-e2e", false).unwrap();

    let w = World::start().await;
    w.receive(&w.lyon, &w.tee_m, 2).await;
    let customer = w.customer("+33 6 98 76 54 32").await;
    let code = w.coupon(&customer.id, 200, &w.livestream.id).await;
    let mut request = w.request(
        &w.eshop,
        vec![line(&w.tee_m, 1)],
        at_store(pb::DeliveryKind::Pickup, &w.lyon),
    );
    request.customer = Some(pb::CustomerRef {
        customer_id: customer.id.clone(),
        ..Default::default()
    });
    request.coupon_codes = vec![code];
    let order = w.place(request).await.expect("placed");

    // The trace of the PlaceOrder call, found by its server span.
    let wanted_consumers = ["crm", "performance"];
    let trace = {
        let mut found = None;
        eventually(async || {
            provider.force_flush().unwrap();
            let spans = collector.spans.lock().unwrap().clone();
            let Some(place) = spans
                .iter()
                .find(|s| s.name == "omni.orders.v1.OrderService/PlaceOrder")
            else {
                return false;
            };
            let in_trace: Vec<&Received> = spans
                .iter()
                .filter(|s| s.trace_id == place.trace_id)
                .collect();
            let consumers: HashSet<&str> = in_trace
                .iter()
                .filter(|s| s.name == "consume orders.order_placed")
                .map(|s| s.consumer.as_str())
                .collect();
            found = Some(in_trace.into_iter().cloned().collect::<Vec<_>>());
            wanted_consumers.iter().all(|c| consumers.contains(c))
        })
        .await;
        found.unwrap()
    };
    let names: HashSet<&str> = trace.iter().map(|s| s.name.as_str()).collect();
    // crm's GetLoyaltyAccount is asked only when order-management keeps no tier for the
    // customer yet (crm announces tiers on its stream), so it may or may not be in the trace.
    for expected in [
        "omni.orders.v1.OrderService/PlaceOrder",
        "omni.identity.v1.IdentityService/GetCustomer",
        "omni.crm.v1.CouponService/CheckCoupon",
        "omni.crm.v1.CouponService/RedeemCoupon",
        "omni.catalog.v1.QuoteService/Quote",
        "omni.inventory.v1.AvailabilityService/GetAvailability",
        "omni.inventory.v1.ReservationService/Reserve",
        "consume orders.order_placed",
    ] {
        assert!(
            names.contains(expected),
            "{expected} missing from the trace: {names:?}"
        );
    }
    let services: HashSet<&str> = trace
        .iter()
        .map(|s| s.service.as_str())
        .filter(|s| !s.is_empty())
        .collect();
    for service in [
        "order-management",
        "identity",
        "catalog",
        "inventory",
        "crm",
    ] {
        assert!(
            services.contains(service),
            "{service} not in the trace: {services:?}"
        );
    }
    assert!(!order.id.is_empty());
    provider.shutdown().unwrap();
}
