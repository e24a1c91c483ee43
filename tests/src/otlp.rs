//! A small OTLP/HTTP receiver built from the `opentelemetry-proto`
//! definitions: it accepts protobuf exports and keeps the spans and metric
//! names it was sent.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;

/// A span as received.
#[derive(Debug, Clone)]
pub struct Span {
    /// Span name.
    pub name: String,
    /// String attributes.
    pub attributes: BTreeMap<String, String>,
    /// Resource attributes of its batch.
    pub resource: BTreeMap<String, String>,
}

/// What the receiver got.
#[derive(Debug, Default)]
pub struct Received {
    /// Spans.
    pub spans: Vec<Span>,
    /// Metric names.
    pub metrics: Vec<String>,
}

fn strings(attrs: &[opentelemetry_proto::tonic::common::v1::KeyValue]) -> BTreeMap<String, String> {
    attrs
        .iter()
        .filter_map(
            |kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => Some((kv.key.clone(), s.clone())),
                Some(Value::IntValue(i)) => Some((kv.key.clone(), i.to_string())),
                _ => None,
            },
        )
        .collect()
}

/// Start a receiver on 127.0.0.1 (own thread and runtime); its address and
/// what it received.
pub fn start() -> (SocketAddr, Arc<Mutex<Received>>) {
    let received = Arc::new(Mutex::new(Received::default()));
    let (tx, rx) = std::sync::mpsc::channel();
    let store = received.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            tx.send(listener.local_addr().expect("addr"))
                .expect("send addr");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let store = store.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let store = store.clone();
                        async move {
                            let path = req.uri().path().to_owned();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let mut r = store.lock().expect("lock");
                            if path == "/v1/traces" {
                                if let Ok(msg) = ExportTraceServiceRequest::decode(body) {
                                    for rs in msg.resource_spans {
                                        let resource = rs
                                            .resource
                                            .as_ref()
                                            .map(|r| strings(&r.attributes))
                                            .unwrap_or_default();
                                        for ss in rs.scope_spans {
                                            for s in ss.spans {
                                                r.spans.push(Span {
                                                    name: s.name,
                                                    attributes: strings(&s.attributes),
                                                    resource: resource.clone(),
                                                });
                                            }
                                        }
                                    }
                                }
                            } else if path == "/v1/metrics"
                                && let Ok(msg) = ExportMetricsServiceRequest::decode(body)
                            {
                                for rm in msg.resource_metrics {
                                    for sm in rm.scope_metrics {
                                        r.metrics.extend(sm.metrics.into_iter().map(|m| m.name));
                                    }
                                }
                            }
                            Ok::<_, std::convert::Infallible>(
                                Response::builder()
                                    .header("content-type", "application/x-protobuf")
                                    .body(Full::new(Bytes::new()))
                                    .expect("response"),
                            )
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    });
    let addr = rx.recv().expect("receiver address");
    (addr, received)
}
