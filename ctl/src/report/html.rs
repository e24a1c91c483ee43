//! The report as one self-contained HTML file: inline CSS, an inline SVG
//! flow map, no script and nothing fetched, printable on A4. Rendered by
//! minijinja from `report.html.j2` with auto-escaping on (the template's
//! name ends in `.html`): every value from the policy or a gateway is
//! escaped; nothing here assembles markup.

use std::collections::BTreeMap;

use minijinja::{Environment, context};
use serde::Serialize;

use super::Report;

const TEMPLATE: &str = include_str!("report.html.j2");

/// A box on the flow map.
#[derive(Debug, Serialize)]
struct Node {
    x: u32,
    y: u32,
    w: u32,
    h: u32,
    label: String,
    sub: String,
    /// CSS class: `stage-<stage>`, `gateway`, `service`, `client`.
    class: String,
    /// Link target (a device's section).
    href: Option<String>,
}

/// `s` cut to `n` characters, with an ellipsis when cut.
fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_owned();
    }
    let mut t: String = s.chars().take(n - 1).collect();
    t.push('…');
    t
}

/// A line on the flow map.
#[derive(Debug, Serialize)]
struct Edge {
    x1: u32,
    y1: u32,
    x2: u32,
    y2: u32,
    /// `port` (device to its gateway), `quic`, `tcp` (tunnels), `local`
    /// (cleartext next to a gateway), `tls` (a client's access).
    class: String,
    title: String,
}

#[derive(Debug, Serialize)]
struct Map {
    width: u32,
    height: u32,
    nodes: Vec<Node>,
    edges: Vec<Edge>,
}

const ROW: u32 = 44;
const BOX_H: u32 = 34;
const COLS: [(u32, u32); 4] = [(10, 200), (270, 160), (490, 160), (710, 200)];

/// Lay the site out in four columns: devices, edge gateways, hubs,
/// services and clients; each gateway level with its devices (or
/// services), lines between what talks to what.
fn map(r: &Report) -> Map {
    let mut nodes = Vec::new();
    let mut edges: BTreeMap<(String, String, String), Edge> = BTreeMap::new();
    let mut at: BTreeMap<String, (u32, u32, u32)> = BTreeMap::new(); // key -> (x, y, w)
    let top = 40;
    for (i, d) in r.devices.iter().enumerate() {
        let y = top + i as u32 * ROW;
        let (x, w) = COLS[0];
        nodes.push(Node {
            x,
            y,
            w,
            h: BOX_H,
            label: cut(d.name.as_deref().unwrap_or(&d.id), 32),
            sub: cut(&format!("{} · {}", d.ip, d.lifecycle.stage), 36),
            class: format!("stage-{}", d.lifecycle.stage),
            href: Some(format!("#device-{}", d.id)),
        });
        at.insert(format!("d:{}", d.id), (x, y, w));
    }
    // Peers, grouped by the hub in front of them.
    let mut peers: Vec<&super::PeerReport> = r.peers.iter().collect();
    peers.sort_by_key(|p| (p.kind != "service", p.via.clone(), p.name.clone()));
    for (i, p) in peers.iter().enumerate() {
        let y = top + i as u32 * ROW;
        let (x, w) = COLS[3];
        nodes.push(Node {
            x,
            y,
            w,
            h: BOX_H,
            label: cut(&p.name, 32),
            sub: cut(
                &match &p.protocol {
                    Some(proto) => format!("{proto} · {}", p.address),
                    None => "client (TLS)".to_owned(),
                },
                36,
            ),
            class: p.kind.clone(),
            href: None,
        });
        at.insert(format!("p:{}", p.name), (x, y, w));
    }
    let edge_gws: Vec<(String, Vec<u32>, String)> = r
        .gateways
        .iter()
        .filter(|g| g.devices > 0)
        .map(|g| {
            let ys = r
                .devices
                .iter()
                .filter(|d| d.gateway == g.name)
                .filter_map(|d| at.get(&format!("d:{}", d.id)).map(|a| a.1))
                .collect();
            (g.name.clone(), ys, format!("edge · {}", g.insertion))
        })
        .collect();
    place(1, edge_gws, &mut nodes, &mut at, top);
    let hubs: Vec<(String, Vec<u32>, String)> = r
        .gateways
        .iter()
        .filter(|g| g.devices == 0)
        .map(|g| {
            let ys = r
                .peers
                .iter()
                .filter(|p| p.via.as_deref() == Some(&g.name))
                .filter_map(|p| at.get(&format!("p:{}", p.name)).map(|a| a.1))
                .collect();
            (g.name.clone(), ys, "hub".to_owned())
        })
        .collect();
    place(2, hubs, &mut nodes, &mut at, top);
    let mut line = |from: &str, to: &str, class: &str, title: String| {
        let (Some(a), Some(b)) = (at.get(from), at.get(to)) else {
            return;
        };
        // QUIC and TCP tunnels between the same gateways side by side.
        let dy: i32 = match class {
            "quic" => -4,
            "tcp" => 4,
            _ => 0,
        };
        let mid = |y: u32| (y + BOX_H / 2).saturating_add_signed(dy);
        edges
            .entry((from.to_owned(), to.to_owned(), class.to_owned()))
            .or_insert(Edge {
                x1: a.0 + a.2,
                y1: mid(a.1),
                x2: b.0,
                y2: mid(b.1),
                class: class.to_owned(),
                title,
            });
    };
    for d in &r.devices {
        line(
            &format!("d:{}", d.id),
            &format!("g:{}", d.gateway),
            "port",
            format!("{} on port {}", d.id, d.interface),
        );
        for f in &d.controls.flows {
            let peer = r.peers.iter().find(|p| p.name == f.peer);
            match (f.direction.as_str(), peer.and_then(|p| p.via.clone())) {
                ("inbound", _) => line(
                    &format!("p:{}", f.peer),
                    &format!("g:{}", d.gateway),
                    "tls",
                    format!("{} (TLS client)", f.name),
                ),
                (_, Some(hub)) => {
                    line(
                        &format!("g:{}", d.gateway),
                        &format!("g:{hub}"),
                        &f.transport,
                        format!("{} over {}", f.name, f.transport),
                    );
                    line(
                        &format!("g:{hub}"),
                        &format!("p:{}", f.peer),
                        "local",
                        format!("{} to {}", f.name, f.address),
                    );
                }
                (_, None) => line(
                    &format!("g:{}", d.gateway),
                    &format!("p:{}", f.peer),
                    "local",
                    format!("{} to {}", f.name, f.address),
                ),
            }
        }
    }
    let rows = r.devices.len().max(r.peers.len()).max(r.gateways.len()) as u32;
    let height = nodes
        .iter()
        .map(|n| n.y + n.h)
        .max()
        .unwrap_or(0)
        .max(top + rows * ROW)
        + 20;
    Map {
        width: 920,
        height,
        nodes,
        edges: edges.into_values().collect(),
    }
}

/// Gateways level with the mean of what they stand in front of, never
/// overlapping.
fn place(
    col: usize,
    names: Vec<(String, Vec<u32>, String)>,
    nodes: &mut Vec<Node>,
    at: &mut BTreeMap<String, (u32, u32, u32)>,
    top: u32,
) {
    let mut next = top;
    for (name, ys, sub) in names {
        let mean = if ys.is_empty() {
            next
        } else {
            ys.iter().sum::<u32>() / ys.len() as u32
        };
        let y = mean.max(next);
        next = y + ROW;
        let (x, w) = COLS[col];
        nodes.push(Node {
            x,
            y,
            w,
            h: BOX_H,
            label: cut(&name, 24),
            sub,
            class: "gateway".into(),
            href: None,
        });
        at.insert(format!("g:{name}"), (x, y, w));
    }
}

/// Render the report.
pub fn render(r: &Report) -> anyhow::Result<String> {
    let mut env = Environment::new();
    env.add_template("report.html", TEMPLATE)?;
    let tmpl = env.get_template("report.html")?;
    Ok(tmpl.render(context! {
        r => r,
        map => map(r),
        stages => super::stages(),
        version => env!("CARGO_PKG_VERSION"),
    })?)
}
