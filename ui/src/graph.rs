//! The service graph page: services and the databases, caches, queues and external APIs they call,
//! laid out left to right from the entry points by `rust-sugiyama`'s layered (Sugiyama) layout.
//! Edges carry calls/s and the hop's p99 and are coloured by latency or error rate; resources used
//! by several services stand out. A node links to its page, an edge to its hop page. A big graph
//! opens on one node's neighbourhood ([`Scope`]); `assets/app.js` zooms and moves the drawing.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hopscope_query::DependenciesQuery;
use hopscope_schemas::api::{DependenciesView, GraphEdgeView, GraphNodeView};
use maud::{Markup, html};

use crate::page::{Frame, PageParams, duration, rate};
use crate::{UiError, UiState, paths};

/// Distance between the left edges of two columns (layers).
const COLUMN_STEP: f64 = 300.0;
/// Space kept free around the drawing.
const PAD: f64 = 24.0;
/// Vertical room between two nodes of a column.
const ROW_GAP: f64 = 26.0;
/// Space between two disconnected parts of the graph, stacked top to bottom.
const PART_GAP: f64 = 40.0;

/// Above this many nodes the page opens on one entry point's neighbourhood, not the whole graph.
pub(crate) const NEIGHBOURHOOD_ABOVE: usize = 50;
/// How many calls away from the focus a neighbourhood reaches when the URL does not say.
const DEFAULT_DEPTH: usize = 2;
/// The value of `focus` that shows the whole graph.
const ALL: &str = "all";

/// How edges are coloured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Colouring {
    /// By the hop's p99.
    Latency,
    /// By the share of calls that failed.
    Errors,
}

/// The size nodes are drawn at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Geometry {
    pub node_w: f64,
    pub node_h: f64,
    /// Whether this is a compact drawing (of more than [`NEIGHBOURHOOD_ABOVE`] nodes): small
    /// boxes and labels, no badges, so that a few hundred nodes fit one screen at a readable size.
    pub compact: bool,
}

impl Geometry {
    /// Boxes for a graph of up to a screenful of nodes.
    pub(crate) const REGULAR: Self = Self { node_w: 170.0, node_h: 34.0, compact: false };
    /// Boxes for a drawing of more than [`NEIGHBOURHOOD_ABOVE`] nodes (the whole of a big graph,
    /// or a hub's large neighbourhood: [`compact_layout`]).
    pub(crate) const COMPACT: Self = Self { node_w: 76.0, node_h: 14.0, compact: true };

    /// The longest label a node shows in full (the full name is in its tooltip).
    fn label_chars(self) -> usize {
        if self.compact { 12 } else { 22 }
    }
}

/// How tall the rows of a compact drawing spread: with its padding, the graph view's height in a
/// window 900 px tall (72% of it), so that a window 1440 px wide shows it at about its own size.
const COMPACT_HEIGHT: f64 = 600.0;
/// The least vertical distance between the tops of two nodes drawn one above the other.
const COMPACT_PITCH: f64 = 18.0;
/// Distance between the left edges of two sub-columns of one layer: room between them for the
/// trunk that bundles the calls into a node ([`BUNDLE_LENGTH`]), so that a node's calls end beside
/// it, not under its neighbour.
const COMPACT_SUB_STEP: f64 = Geometry::COMPACT.node_w + BUNDLE_LENGTH + 4.0;
/// Room between one layer's last sub-column and the next layer, where calls run.
const COMPACT_GAP: f64 = 40.0;

/// Where each node sits (its top-left corner), the drawing's size, and the size of its nodes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Layout {
    pub positions: HashMap<String, (f64, f64)>,
    pub width: f64,
    pub height: f64,
    pub geometry: Geometry,
}

/// One disconnected part of a graph as `rust-sugiyama` lays it out: its nodes' indices by layer
/// (entry points first), each layer top to bottom, with the vertical offset it gives each node.
type Layers = Vec<Vec<(usize, f64)>>;

/// The layers of every disconnected part of the graph, from `rust-sugiyama`, with each node as
/// tall as `extent.0` and as wide as `extent.1`.
fn layered(nodes: &[String], edges: &[(String, String)], extent: (f64, f64)) -> Result<Vec<Layers>, UiError> {
    let index: HashMap<&str, u32> = nodes.iter().enumerate().map(|(i, n)| (n.as_str(), i as u32)).collect();
    let mut pairs = BTreeSet::new();
    for (caller, callee) in edges {
        let (Some(&a), Some(&b)) = (index.get(caller.as_str()), index.get(callee.as_str())) else {
            return Err(UiError::Layout(format!("edge {caller} → {callee} names a node that is not in the graph")));
        };
        if a != b {
            pairs.insert((a, b));
        }
    }
    let pairs: Vec<(u32, u32)> = pairs.into_iter().collect();
    // Sugiyama's layer axis is vertical; ours is horizontal, so a node's extent within a layer is
    // its height.
    let vertices: Vec<(u32, (f64, f64))> = (0..nodes.len() as u32).map(|i| (i, extent)).collect();
    let config = rust_sugiyama::configure::Config {
        vertex_spacing: ROW_GAP,
        dummy_vertices: true,
        // Transposing improves crossings but costs much more time on large graphs.
        transpose: nodes.len() <= 120,
        ..Default::default()
    };
    let parts = std::panic::catch_unwind(|| rust_sugiyama::from_vertices_and_edges(&vertices, &pairs, &config))
        .map_err(|_| UiError::Layout("the layout library failed on this graph".into()))?;
    Ok(parts
        .into_iter()
        .map(|(coordinates, _, _)| {
            let real: Vec<(usize, f64, f64)> =
                coordinates.into_iter().filter(|(id, _)| *id < nodes.len()).map(|(id, (x, y))| (id, x, y)).collect();
            // Layers: the distinct vertical coordinates, in order.
            let mut levels: Vec<f64> = real.iter().map(|r| r.2).collect();
            levels.sort_by(f64::total_cmp);
            levels.dedup_by(|a, b| (*a - *b).abs() < 0.5);
            let low = real.iter().map(|r| r.1).fold(f64::INFINITY, f64::min);
            let mut layers = vec![Vec::new(); levels.len()];
            for (id, x, y) in real {
                let layer = levels.iter().position(|l| (l - y).abs() < 0.5).unwrap_or(0);
                layers[layer].push((id, x - low));
            }
            for layer in &mut layers {
                layer.sort_by(|a, b| a.1.total_cmp(&b.1));
            }
            layers
        })
        .collect())
}

/// Lays the graph out left to right: layers from `rust-sugiyama` become columns (entry points on
/// the left), its order within a layer becomes the order top to bottom. Disconnected parts are
/// stacked; self-calls and repeated edges do not change the layout. Above [`NEIGHBOURHOOD_ABOVE`]
/// nodes the drawing is [`compact_layout`].
pub(crate) fn layout(nodes: &[String], edges: &[(String, String)]) -> Result<Layout, UiError> {
    if nodes.len() > NEIGHBOURHOOD_ABOVE {
        return compact_layout(nodes, edges);
    }
    let geometry = Geometry::REGULAR;
    let (node_w, node_h) = (geometry.node_w, geometry.node_h);
    let mut positions = HashMap::new();
    let (mut top, mut width) = (PAD, 0.0f64);
    for layers in layered(nodes, edges, (node_h, node_w))? {
        let mut bottom = top;
        for (column, layer) in layers.iter().enumerate() {
            for &(id, offset) in layer {
                let (left, upper) = (PAD + COLUMN_STEP * column as f64, top + offset);
                positions.insert(nodes[id].clone(), (left, upper));
                width = width.max(left + node_w + PAD);
                bottom = bottom.max(upper + node_h);
            }
        }
        top = bottom + PART_GAP;
    }
    let laid = Layout {
        positions,
        width: width.max(node_w + 2.0 * PAD),
        height: (top - PART_GAP + PAD).max(node_h + 2.0 * PAD),
        geometry,
    };
    Ok(with_loops(laid, edges))
}

/// `laid` made tall enough for the calls that go back to an earlier column or to their own node,
/// which loop below their nodes ([`edge_path`]): such a loop's middle is its lowest point when its
/// ends are level, and near it otherwise (within the padding kept below it).
fn with_loops(mut laid: Layout, edges: &[(String, String)]) -> Layout {
    for (caller, callee) in edges {
        if let (Some(&from), Some(&to)) = (laid.positions.get(caller), laid.positions.get(callee))
            && !forward(from, to, laid.geometry)
        {
            let (_, middle) = edge_path(from, to, false, laid.geometry);
            laid.height = laid.height.max(middle.1 + PAD);
        }
    }
    laid
}

/// A drawing of many nodes on one screen: small boxes ([`Geometry::COMPACT`]), each layer's
/// nodes in `rust-sugiyama`'s order spread evenly over one height, and a layer too tall for it
/// wrapped into side-by-side sub-columns that its nodes alternate between (a zigzag: neighbours in
/// the order sit in different sub-columns, so each sub-column keeps [`COMPACT_PITCH`] between its
/// nodes). Disconnected parts share the columns, one after another.
fn compact_layout(nodes: &[String], edges: &[(String, String)]) -> Result<Layout, UiError> {
    let geometry = Geometry::COMPACT;
    let mut columns: Vec<Vec<usize>> = Vec::new();
    for layers in layered(nodes, edges, (COMPACT_PITCH, geometry.node_w))? {
        for (column, layer) in layers.into_iter().enumerate() {
            if columns.len() <= column {
                columns.resize(column + 1, Vec::new());
            }
            columns[column].extend(layer.into_iter().map(|(id, _)| id));
        }
    }
    let mut positions = HashMap::new();
    let mut left = PAD;
    for column in &columns {
        let n = column.len().max(1) as f64;
        let step = COMPACT_HEIGHT / n;
        let wraps = (COMPACT_PITCH / step).ceil().max(1.0) as usize;
        for (i, &id) in column.iter().enumerate() {
            let x = left + (i % wraps) as f64 * COMPACT_SUB_STEP;
            let y = PAD + (i as f64 + 0.5) * step - geometry.node_h / 2.0;
            positions.insert(nodes[id].clone(), (x, y));
        }
        let used = wraps.min(column.len().max(1));
        left += (used - 1) as f64 * COMPACT_SUB_STEP + geometry.node_w + COMPACT_GAP;
    }
    let laid = Layout { positions, width: left - COMPACT_GAP + PAD, height: COMPACT_HEIGHT + 2.0 * PAD, geometry };
    Ok(with_loops(laid, edges))
}

/// The class an edge's colour comes from, and what it means.
fn edge_class(edge: &GraphEdgeView, colouring: Colouring) -> &'static str {
    match colouring {
        Colouring::Latency => match edge.p99_ns {
            p if p < 10e6 => "good",
            p if p < 100e6 => "fair",
            p if p < 1e9 => "poor",
            _ => "bad",
        },
        Colouring::Errors => match edge.errors as f64 / edge.calls.max(1) as f64 {
            0.0 => "good",
            r if r < 0.01 => "fair",
            r if r < 0.05 => "poor",
            _ => "bad",
        },
    }
}

/// A short label that fits a node of `geometry`; the full name is in its tooltip.
fn fit(name: &str, geometry: Geometry) -> String {
    let max = geometry.label_chars();
    if name.chars().count() <= max {
        name.to_owned()
    } else {
        format!("{}…", name.chars().take(max - 1).collect::<String>())
    }
}

fn node_shape(node: &GraphNodeView, geometry: Geometry) -> Markup {
    let (w, h) = (geometry.node_w, geometry.node_h);
    // (A database's rim: at most a third of the box's height.)
    let rim = (h / 3.0).min(6.0);
    html! {
        @match node.kind.as_str() {
            "database" => {
                path.shape d=(format!("M0,{rim} a{r},{rim} 0 0,0 {w},0 a{r},{rim} 0 0,0 -{w},0 v{b} a{r},{rim} 0 0,0 {w},0 v-{b}", r = w / 2.0, b = h - 2.0 * rim)) {}
            }
            "messaging" => {
                path.shape d=(format!("M10,0 H{} L{},{} H0 Z", w, w - 10.0, h)) {}
            }
            "user" => { rect.shape width=(w) height=(h) rx=(h / 2.0) {} }
            _ => { rect.shape width=(w) height=(h) rx="6" {} }
        }
    }
}

/// How far before a node the calls into it join when several come from columns to its left: they
/// end there, and one short trunk with one arrowhead enters the node (see [`bundled_callees`]).
const BUNDLE_LENGTH: f64 = 26.0;

/// The callees that two or more drawn calls from earlier columns reach: their calls are bundled
/// into a trunk, so a shared database shows one arrowhead, not a pile of them.
fn bundled_callees<'a>(view: &'a DependenciesView, layout: &Layout) -> HashMap<&'a str, usize> {
    let mut into: HashMap<&str, usize> = HashMap::new();
    for edge in &view.edges {
        if let (Some(from), Some(to)) = (layout.positions.get(&edge.caller), layout.positions.get(&edge.callee))
            && forward(*from, *to, layout.geometry)
        {
            *into.entry(edge.callee.as_str()).or_default() += 1;
        }
    }
    into.retain(|_, calls| *calls >= 2);
    into
}

/// Whether a call from a node at `from` to one at `to` goes right (else it loops around below).
fn forward(from: (f64, f64), to: (f64, f64), geometry: Geometry) -> bool {
    to.0 > from.0 + geometry.node_w + BUNDLE_LENGTH
}

/// The path of a call from the node at `from` to the node at `to`, and its middle; a `bundled` call
/// ends where its callee's trunk starts, arriving level with it.
fn edge_path(from: (f64, f64), to: (f64, f64), bundled: bool, geometry: Geometry) -> (String, (f64, f64)) {
    let (sx, sy) = (from.0 + geometry.node_w, from.1 + geometry.node_h / 2.0);
    let forward = forward(from, to, geometry);
    let tx = if bundled && forward { to.0 - BUNDLE_LENGTH } else { to.0 };
    let ty = to.1 + geometry.node_h / 2.0;
    let (c1, c2) = if forward {
        let bend = (tx - sx) / 2.0;
        ((sx + bend, sy), (tx - bend, ty))
    } else {
        // A call back to an earlier column: loop around below.
        let drop = 60.0 + (sx - tx).abs() / 6.0;
        ((sx + 60.0, sy.max(ty) + drop), (tx - 60.0, sy.max(ty) + drop))
    };
    let mid = ((sx + 3.0 * c1.0 + 3.0 * c2.0 + tx) / 8.0, (sy + 3.0 * c1.1 + 3.0 * c2.1 + ty) / 8.0);
    (format!("M{sx:.1},{sy:.1} C{:.1},{:.1} {:.1},{:.1} {tx:.1},{ty:.1}", c1.0, c1.1, c2.0, c2.1), mid)
}

/// A box on the drawing: left, top, right, bottom.
type Area = (f64, f64, f64, f64);

fn overlaps(a: &Area, b: &Area) -> bool {
    a.0 < b.2 && b.0 < a.2 && a.1 < b.3 && b.1 < a.3
}

/// Where an edge label sits, its baseline centred on `at`: an estimate on the generous side of
/// what the browser draws (10.5 px sans-serif: DejaVu Sans draws these labels at 5.4 to 5.7 px a
/// character; its halo adds 1.5 px a side). A column gap (130 px) holds a label of 20 characters.
fn label_area(text: &str, at: (f64, f64)) -> Area {
    let half = text.chars().count() as f64 * 3.0 + 2.5;
    (at.0 - half, at.1 - 11.0, at.0 + half, at.1 + 4.0)
}

/// Which edges' labels are drawn (the rest show on hover and focus): the edges that matter first —
/// erroring, then by the better of their ranks by p99 and by calls — each where it overlaps no
/// node and no label drawn before it.
fn shown_labels(view: &DependenciesView, layout: &Layout, labels: &[(String, (f64, f64))]) -> Vec<bool> {
    let rank = |key: &dyn Fn(&GraphEdgeView) -> f64| -> Vec<usize> {
        let mut order: Vec<usize> = (0..view.edges.len()).collect();
        order.sort_by(|&a, &b| key(&view.edges[b]).total_cmp(&key(&view.edges[a])));
        let mut rank = vec![0; order.len()];
        for (r, i) in order.into_iter().enumerate() {
            rank[i] = r;
        }
        rank
    };
    let (by_p99, by_calls) = (rank(&|e| e.p99_ns), rank(&|e| e.calls as f64));
    let mut order: Vec<usize> = (0..view.edges.len()).collect();
    order.sort_by_key(|&i| (view.edges[i].errors == 0, by_p99[i].min(by_calls[i]), i));
    let (w, h) = (layout.geometry.node_w, layout.geometry.node_h);
    // (With room for a node's badge above it.)
    let above = if layout.geometry.compact { 2.0 } else { 14.0 };
    let mut taken: Vec<Area> =
        layout.positions.values().map(|&(x, y)| (x - 1.0, y - above, x + w + 1.0, y + h + 2.0)).collect();
    let mut shown = vec![false; view.edges.len()];
    for i in order {
        let (text, at) = &labels[i];
        if text.is_empty() {
            continue;
        }
        let area = label_area(text, *at);
        if !taken.iter().any(|t| overlaps(t, &area)) {
            taken.push(area);
            shown[i] = true;
        }
    }
    shown
}

/// The graph as SVG: one `g.node` per node and one `g.edge` per edge, each a link.
pub(crate) fn render_graph(
    params: &PageParams,
    view: &DependenciesView,
    layout: &Layout,
    colouring: Colouring,
    focus: Option<&str>,
) -> Markup {
    let shared: HashMap<&str, usize> =
        view.shared_resources.iter().map(|s| (s.name.as_str(), s.services.len())).collect();
    let bundled = bundled_callees(view, layout);
    // Each edge's label and where it would sit (empty for an edge not drawn).
    let labels: Vec<(String, (f64, f64))> = view
        .edges
        .iter()
        .map(|edge| match (layout.positions.get(&edge.caller), layout.positions.get(&edge.callee)) {
            (Some(&from), Some(&to)) => {
                // (At the middle of the whole way, bundled or not: the middle of the column gap.)
                let (_, mid) = edge_path(from, to, false, layout.geometry);
                (format!("{} · p99 {}", rate(edge.rate_per_s), duration(edge.p99_ns)), (mid.0, mid.1 - 4.0))
            }
            _ => (String::new(), (0.0, 0.0)),
        })
        .collect();
    let shown = shown_labels(view, layout, &labels);
    let geometry = layout.geometry;
    let (node_w, node_h) = (geometry.node_w, geometry.node_h);
    html! {
        div.graph-view #graph-view tabindex="0" aria-label="service graph: drag or use the arrow keys to move, + and − to zoom, 0 to fit" style=(format!("height: min(72vh, {:.0}px)", layout.height)) {
            svg #service-graph .compact[geometry.compact] role="img" aria-label="service graph" viewBox=(format!("0 0 {:.0} {:.0}", layout.width, layout.height)) data-focus=[focus] data-node-width=(node_w) data-node-height=(node_h) {
                defs {
                    // One size whatever the edge's width, so a wide trunk's arrowhead does not cover it.
                    marker #arrow viewBox="0 0 10 10" refX="9" refY="5" markerUnits="userSpaceOnUse" markerWidth="11" markerHeight="11" orient="auto-start-reverse" {
                        path d="M0,0 L10,5 L0,10 z" fill="#868e96" {}
                    }
                }
                @for (i, edge) in view.edges.iter().enumerate() {
                    @if let (Some(&from), Some(&to)) = (layout.positions.get(&edge.caller), layout.positions.get(&edge.callee)) {
                        @let into_trunk = bundled.contains_key(edge.callee.as_str()) && forward(from, to, geometry);
                        @let (d, _) = edge_path(from, to, into_trunk, geometry);
                        @let width = edge_width(edge.calls);
                        @let (label, at) = &labels[i];
                        a href=(params.link(paths::HOP, &[("caller", &edge.caller), ("callee", &edge.callee)])) {
                            g class=(format!("edge {}", edge_class(edge, colouring))) data-caller=(edge.caller) data-callee=(edge.callee) data-connection=(edge.connection) {
                                title { (edge.caller) " → " (edge.callee) " (" (edge.connection) "): " (edge.calls) " calls, " (edge.errors) " errors, " (label) }
                                path.edge-line d=(d) stroke-width=(format!("{width:.1}")) marker-end=[(!into_trunk).then_some("url(#arrow)")] stroke-dasharray=[(edge.connection == "messaging").then_some("6 4")] {}
                                text class=(if shown[i] { "edge-label" } else { "edge-label on-hover" }) x=(format!("{:.1}", at.0)) y=(format!("{:.1}", at.1)) text-anchor="middle" { (label) }
                            }
                        }
                    }
                }
                // One trunk into each bundled callee, as wide as the busiest call it carries.
                @for node in &view.nodes {
                    @if let (Some(&(x, y)), Some(calls)) = (layout.positions.get(&node.name), bundled.get(node.name.as_str())) {
                        @let busiest = view.edges.iter().filter(|e| e.callee == node.name && layout.positions.get(&e.caller).is_some_and(|&from| forward(from, (x, y), geometry))).map(|e| e.calls).max().unwrap_or(0);
                        path.trunk data-callee=(node.name) data-calls=(calls) d=(format!("M{:.1},{:.1} L{x:.1},{:.1}", x - BUNDLE_LENGTH, y + node_h / 2.0, y + node_h / 2.0)) stroke-width=(format!("{:.1}", edge_width(busiest))) marker-end="url(#arrow)" {}
                    }
                }
                @for node in &view.nodes {
                    @if let Some(&(x, y)) = layout.positions.get(&node.name) {
                        a href=(params.link(paths::SERVICE, &[("name", &node.name)])) {
                            g class=(format!("node kind-{}{}", node.kind, if shared.contains_key(node.name.as_str()) { " shared" } else { "" })) data-name=(node.name) data-kind=(node.kind) transform=(format!("translate({x:.1},{y:.1})")) {
                                title { (node.name) " (" (node.kind) "), " (node.calls_in) " calls in" @if let Some(n) = shared.get(node.name.as_str()) { ", shared by " (n) " services" } }
                                (node_shape(node, geometry))
                                text.node-label x=(node_w / 2.0) y=(node_h / 2.0 + if geometry.compact { 3.5 } else { 4.0 }) text-anchor="middle" { (fit(&node.name, geometry)) }
                                @if let (Some(n), false) = (shared.get(node.name.as_str()), geometry.compact) {
                                    text.badge x=(node_w - 4.0) y="-4" text-anchor="end" { "shared by " (n) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// An edge's stroke width: 1 px, and 1 more per tenfold calls, at most 6.
fn edge_width(calls: u64) -> f64 {
    (1.0 + (calls as f64).log10().max(0.0)).min(6.0)
}

fn legend(colouring: Colouring) -> Markup {
    let classes = match colouring {
        Colouring::Latency => [("good", "p99 < 10ms"), ("fair", "< 100ms"), ("poor", "< 1s"), ("bad", "≥ 1s")],
        Colouring::Errors => [("good", "no errors"), ("fair", "< 1% errors"), ("poor", "< 5%"), ("bad", "≥ 5%")],
    };
    html! {
        p.legend {
            @for (class, label) in classes { span class=(format!("swatch edge-swatch {class}")) {} (label) " " }
            " · nodes: "
            @for kind in ["service", "database", "cache", "messaging", "external", "rpc", "user"] {
                span class=(format!("swatch node-swatch kind-{kind}")) {} (kind) " "
            }
            " · dashed: messaging"
        }
    }
}

/// Which part of the graph a page shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Every node.
    All,
    /// `focus` with its callers and their callers, and its callees and theirs, up to `depth` calls
    /// away (a callee's other callers are not pulled in).
    Around { focus: String, depth: usize },
}

/// The entry point a big graph opens on: of the nodes nothing calls, the one that makes the most
/// calls (by name when tied); the node that makes the most calls when every node is called.
pub(crate) fn default_focus(view: &DependenciesView) -> Option<String> {
    let called: BTreeSet<&str> =
        view.edges.iter().filter(|e| e.caller != e.callee).map(|e| e.callee.as_str()).collect();
    let mut calls_out: BTreeMap<&str, u64> = view.nodes.iter().map(|n| (n.name.as_str(), 0)).collect();
    for e in &view.edges {
        *calls_out.entry(e.caller.as_str()).or_default() += e.calls;
    }
    let best = |entries_only: bool| {
        calls_out
            .iter()
            .filter(|(name, _)| !entries_only || !called.contains(*name))
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .map(|(name, _)| (*name).to_owned())
    };
    best(true).or_else(|| best(false))
}

/// The nodes of `scope`: within `depth` calls of the focus upstream (callers) and downstream
/// (callees), walked separately.
pub(crate) fn neighbourhood<'a>(view: &'a DependenciesView, focus: &'a str, depth: usize) -> BTreeSet<&'a str> {
    let mut kept = BTreeSet::from([focus]);
    for downstream in [true, false] {
        let mut seen = BTreeSet::from([focus]);
        let mut frontier = vec![focus];
        for _ in 0..depth {
            let mut next = Vec::new();
            for e in &view.edges {
                let (from, to) = if downstream { (&e.caller, &e.callee) } else { (&e.callee, &e.caller) };
                if frontier.contains(&from.as_str()) && seen.insert(to.as_str()) {
                    next.push(to.as_str());
                }
            }
            kept.extend(&next);
            frontier = next;
        }
    }
    kept
}

/// `view` with only the nodes of `kept` and the edges between them (the tables stay whole).
fn restrict(view: &DependenciesView, kept: &BTreeSet<&str>) -> DependenciesView {
    let mut shown = view.clone();
    shown.nodes.retain(|n| kept.contains(n.name.as_str()));
    shown.edges.retain(|e| kept.contains(e.caller.as_str()) && kept.contains(e.callee.as_str()));
    shown
}

/// The scope the URL asks for (`focus`, `depth`), or the default for a graph of `nodes` nodes.
/// `Err`: the focus the URL names is not in the graph, said with the nearest names.
fn scope(params: &PageParams, view: &DependenciesView) -> Result<Result<Scope, String>, UiError> {
    let depth = match params.text("depth") {
        None => DEFAULT_DEPTH,
        Some("1") => 1,
        Some("2") => 2,
        Some(other) => return Err(UiError::BadParameter(format!("depth: expected 1 or 2, got {other:?}"))),
    };
    Ok(match params.text("focus") {
        Some(ALL) => Ok(Scope::All),
        Some(focus) if view.nodes.iter().any(|n| n.name == focus) => {
            Ok(Scope::Around { focus: focus.to_owned(), depth })
        }
        Some(focus) => {
            let names: Vec<&str> = view.nodes.iter().map(|n| n.name.as_str()).collect();
            let nearest = crate::page::nearest(focus, &names, 3);
            Err(match nearest.is_empty() {
                true => format!(
                    "No service or resource named “{focus}” made or took calls in {}.",
                    params.window.describe()
                ),
                false => format!(
                    "No service or resource named “{focus}” made or took calls in {}. Did you mean {}?",
                    params.window.describe(),
                    nearest.join(", ")
                ),
            })
        }
        None if view.nodes.len() > NEIGHBOURHOOD_ABOVE => {
            Ok(default_focus(view).map_or(Scope::All, |focus| Scope::Around { focus, depth }))
        }
        None => Ok(Scope::All),
    })
}

/// `GET /ui/graph?color=latency|errors&focus=<node>|all&depth=1|2`
pub(crate) async fn page(
    State(ui): UiState,
    headers: HeaderMap,
    Query(raw): Query<HashMap<String, String>>,
) -> Result<Response, UiError> {
    let params = ui.params(raw, &["color", "focus", "depth"]).await?;
    let colouring = match params.text("color") {
        None | Some("latency") => Colouring::Latency,
        Some("errors") => Colouring::Errors,
        Some(other) => return Err(UiError::BadParameter(format!("color: expected latency or errors, got {other:?}"))),
    };
    let range = params.window.range;
    let view = ui.engine.dependencies(DependenciesQuery { range, exact: false }).await?;
    let mut status = StatusCode::OK;
    let body = if view.nodes.is_empty() {
        crate::page::empty_state(&ui, &params, paths::GRAPH, &headers, "calls").await?
    } else {
        let (scope, problem) = match scope(&params, &view)? {
            Ok(scope) => (scope, None),
            Err(problem) => {
                status = StatusCode::NOT_FOUND;
                (
                    default_focus(&view).map_or(Scope::All, |focus| Scope::Around { focus, depth: DEFAULT_DEPTH }),
                    Some(problem),
                )
            }
        };
        let shown = match &scope {
            Scope::All => view.clone(),
            Scope::Around { focus, depth } => restrict(&view, &neighbourhood(&view, focus, *depth)),
        };
        let names: Vec<String> = shown.nodes.iter().map(|n| n.name.clone()).collect();
        let pairs: Vec<(String, String)> = shown.edges.iter().map(|e| (e.caller.clone(), e.callee.clone())).collect();
        let layout = tokio::task::spawn_blocking(move || layout(&names, &pairs))
            .await
            .map_err(|e| UiError::Layout(e.to_string()))??;
        render_page(
            &params,
            &Shown { all: &view, shown: &shown, scope: &scope, problem: problem.as_deref() },
            &layout,
            colouring,
        )
    };
    let keep: Vec<(&str, &str)> =
        ["color", "focus", "depth"].into_iter().filter_map(|k| params.text(k).map(|v| (k, v))).collect();
    let page = Frame { title: "Service graph", path: paths::GRAPH, window: &params.window, keep }.render(body);
    Ok((status, page).into_response())
}

/// What a graph page shows: the whole graph's figures, and the part of it drawn.
struct Shown<'a> {
    all: &'a DependenciesView,
    shown: &'a DependenciesView,
    scope: &'a Scope,
    /// The URL's focus, when it is not in the graph.
    problem: Option<&'a str>,
}

/// The service search, the neighbourhood's depth, and the zoom buttons (shown by the script).
fn controls(params: &PageParams, all: &DependenciesView, scope: &Scope) -> Markup {
    let (focus, depth) = match scope {
        Scope::All => ("", DEFAULT_DEPTH),
        Scope::Around { focus, depth } => (focus.as_str(), *depth),
    };
    let colour = params.text("color");
    html! {
        div.graph-controls {
            form.focus method="get" action=(paths::GRAPH) {
                @for (k, v) in params.window.query_pairs() { input type="hidden" name=(k) value=(v); }
                @if let Some(c) = colour { input type="hidden" name="color" value=(c); }
                label { "Service " input type="search" name="focus" list="graph-services" value=(focus) placeholder="find a service" autocomplete="off"; }
                datalist #graph-services { @for n in &all.nodes { option value=(n.name) {} } }
                label { " with what it calls and what calls it, "
                    select name="depth" {
                        @for d in [1, 2] { option value=(d) selected[d == depth] { (d) @if d == 1 { " call" } @else { " calls" } " away" } }
                    }
                }
                button type="submit" { "Show" }
            }
            @if matches!(scope, Scope::Around { .. }) {
                a.show-all href=(params.link(paths::GRAPH, &[("focus", ALL), ("color", colour.unwrap_or("latency"))])) { "Show all " (all.nodes.len()) " nodes" }
            }
            div.zoom hidden {
                button type="button" data-zoom="in" title="Zoom in (+)" { "+" }
                button type="button" data-zoom="out" title="Zoom out (−)" { "−" }
                button type="button" data-zoom="fit" title="Fit to the view (0)" { "Fit" }
            }
        }
    }
}

fn render_page(params: &PageParams, graph: &Shown<'_>, layout: &Layout, colouring: Colouring) -> Markup {
    let Shown { all: view, shown, scope, problem } = *graph;
    let other = match colouring {
        Colouring::Latency => ("errors", "colour by error rate"),
        Colouring::Errors => ("latency", "colour by p99 latency"),
    };
    let mut recolour = vec![("color", other.0)];
    recolour.extend(["focus", "depth"].into_iter().filter_map(|k| params.text(k).map(|v| (k, v))));
    let mut callers: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &view.edges {
        *callers.entry(e.caller.as_str()).or_default() += 1;
    }
    html! {
        h1 { "Service graph" }
        p.summary {
            (view.nodes.len()) " nodes, " (view.edges.len()) " hops in " (params.window.describe()) ". "
            @if let Scope::Around { focus, depth } = scope {
                "Shown: " strong { (focus) } " and what is within " (depth) @if *depth == 1 { " call" } @else { " calls" } " of it, " (shown.nodes.len()) " nodes"
                @if view.nodes.len() > NEIGHBOURHOOD_ABOVE && params.text("focus").is_none() { " (the busiest entry point: the whole graph has more than " (NEIGHBOURHOOD_ABOVE) ")" }
                ". "
            }
            "Click a node for its latency, an edge for the hop. "
            @if view.percentiles.method == "sketch" {
                span title=(format!("over {} to {}, the range widened to whole minutes", view.start, view.end)) {
                    "Percentiles are estimated from per-minute latency sketches (within "
                    (crate::page::percent(view.percentiles.relative_error)) "). "
                }
            }
            a href=(params.link(paths::GRAPH, &recolour)) { (other.1) }
        }
        @if let Some(problem) = problem { p.error-message { (problem) } }
        (controls(params, view, scope))
        (legend(colouring))
        // Every node and edge is a link: a keyboard user can pass them all at once.
        a.skip-link href="#graph-tables" { "Skip the graph's " (shown.nodes.len() + shown.edges.len()) " links to its tables" }
        (render_graph(params, shown, layout, colouring, match scope { Scope::All => None, Scope::Around { focus, .. } => Some(focus.as_str()) }))
        div #graph-tables tabindex="-1" {}
        @if !view.shared_resources.is_empty() {
            h2 { "Shared resources" }
            p { "Databases, caches and queues used by several services: they couple services that look independent." }
            table.shared-resources {
                thead { tr { th { "resource" } th { "kind" } th { "used by" } th.num { "calls" } } }
                tbody {
                    @for s in &view.shared_resources {
                        tr {
                            td { a href=(params.link(paths::SERVICE, &[("name", &s.name)])) { (s.name) } }
                            td { (s.kind) }
                            td { @for (i, service) in s.services.iter().enumerate() { @if i > 0 { ", " } a href=(params.link(paths::SERVICE, &[("name", service)])) { (service) } } }
                            td.num { (s.calls) }
                        }
                    }
                }
            }
        }
        @if !view.endpoints.is_empty() {
            h2 { "Entry endpoints" }
            table.endpoints {
                thead { tr { th { "endpoint" } th.num { "depth" } th { "reaches" } th { "slowest hop (p99)" } th { } } }
                tbody {
                    @for e in &view.endpoints {
                        tr {
                            td { a href=(params.link(paths::SERVICE, &[("name", &e.service), ("operation", &e.operation)])) { (e.service) " · " (e.operation) } }
                            td.num { (e.depth) }
                            td { (e.reaches.len()) " nodes" }
                            td { @if let Some(h) = &e.slowest_hop { a href=(params.link(paths::HOP, &[("caller", &h.caller), ("callee", &h.callee)])) { (h.caller) " → " (h.callee) } " " (duration(h.p99_ns)) } }
                            td { a href=(params.link(paths::CRITICAL_PATH, &[("service", &e.service), ("operation", &e.operation)])) { "critical path" } }
                        }
                    }
                }
            }
        }
        @if !view.async_links.is_empty() {
            h2 { "Asynchronous links" }
            table.async-links {
                thead { tr { th { "producer" } th { "broker" } th { "consumer" } th.num { "messages" } th.num { "queue delay p50" } th.num { "p99" } } }
                tbody {
                    @for l in &view.async_links {
                        tr {
                            td { (l.producer) } td { (l.broker.as_deref().unwrap_or("–")) } td { (l.consumer) } td.num { (l.messages) }
                            td.num { @if let Some(q) = &l.queue_delay { (duration(q.p50_ns)) } } td.num { @if let Some(q) = &l.queue_delay { (duration(q.p99_ns)) } }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(edges: &[(&str, &str, u64)]) -> DependenciesView {
        let mut nodes: BTreeSet<&str> = BTreeSet::new();
        for (a, b, _) in edges {
            nodes.extend([a, b]);
        }
        let node = |name: &str| GraphNodeView { name: name.into(), kind: "service".into(), calls_in: 0 };
        let edge = |&(caller, callee, calls): &(&str, &str, u64)| GraphEdgeView {
            caller: caller.into(),
            callee: callee.into(),
            connection: "rpc".into(),
            calls,
            errors: 0,
            rate_per_s: 0.0,
            p99_ns: 0.0,
        };
        DependenciesView {
            start: String::new(),
            end: String::new(),
            percentiles: hopscope_schemas::api::PercentileAccuracy { method: "exact", relative_error: 0.0 },
            nodes: nodes.into_iter().map(node).collect(),
            edges: edges.iter().map(edge).collect(),
            shared_resources: vec![],
            endpoints: vec![],
            async_links: vec![],
        }
    }

    #[test]
    fn a_neighbourhood_walks_callers_and_callees_apart() {
        // A shared database does not pull in its other callers; a cycle is walked both ways.
        let v = view(&[("a", "db", 1), ("x", "db", 1), ("a", "b", 1), ("b", "c", 1), ("c", "a", 1), ("c", "d", 1)]);
        assert_eq!(neighbourhood(&v, "a", 1), BTreeSet::from(["a", "b", "c", "db"]));
        // d is three calls down (a → b → c → d), and only a callee of a's caller c.
        assert_eq!(neighbourhood(&v, "a", 2), BTreeSet::from(["a", "b", "c", "db"]));
        assert_eq!(neighbourhood(&v, "b", 2), BTreeSet::from(["a", "b", "c", "d"]));
        assert_eq!(neighbourhood(&v, "db", 1), BTreeSet::from(["a", "db", "x"]));
    }

    #[test]
    fn a_big_graph_opens_on_its_busiest_entry_point() {
        let v = view(&[("user", "gateway", 50), ("cron", "batch", 70), ("gateway", "db", 900), ("batch", "db", 5)]);
        assert_eq!(default_focus(&v).as_deref(), Some("cron"));
        let tied = view(&[("b", "x", 5), ("a", "x", 5)]);
        assert_eq!(default_focus(&tied).as_deref(), Some("a"));
        // Every node called: the one that calls most.
        let ring = view(&[("a", "b", 1), ("b", "a", 3)]);
        assert_eq!(default_focus(&ring).as_deref(), Some("b"));
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| (*s).to_owned()).collect()
    }

    fn edges(e: &[(&str, &str)]) -> Vec<(String, String)> {
        e.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect()
    }

    fn overlap(a: (f64, f64), b: (f64, f64), geometry: Geometry) -> bool {
        (a.0 - b.0).abs() < geometry.node_w && (a.1 - b.1).abs() < geometry.node_h
    }

    #[test]
    fn callers_sit_left_of_callees_and_nodes_do_not_overlap() {
        let nodes = names(&["user", "gateway", "orders", "payments", "postgresql/shop", "redis", "lonely", "other"]);
        let calls = edges(&[
            ("user", "gateway"),
            ("gateway", "orders"),
            ("gateway", "payments"),
            ("orders", "postgresql/shop"),
            ("payments", "postgresql/shop"),
            ("orders", "redis"),
            ("orders", "orders"),
            ("gateway", "orders"),
            ("lonely", "other"),
        ]);
        let laid = layout(&nodes, &calls).unwrap();
        assert_eq!(laid.positions.len(), nodes.len());
        for (caller, callee) in &calls {
            if caller != callee {
                assert!(laid.positions[caller].0 < laid.positions[callee].0, "{caller} → {callee}: {laid:?}");
            }
        }
        assert_eq!(laid.geometry, Geometry::REGULAR);
        apart_and_inside(&laid);
    }

    /// Every node of `laid` inside the drawing, none overlapping another.
    fn apart_and_inside(laid: &Layout) {
        let g = laid.geometry;
        let all: Vec<(f64, f64)> = laid.positions.values().copied().collect();
        for (i, a) in all.iter().enumerate() {
            assert!(a.0 >= 0.0 && a.1 >= 0.0, "{a:?} outside {laid:?}");
            assert!(a.0 + g.node_w <= laid.width && a.1 + g.node_h <= laid.height, "{a:?} outside {laid:?}");
            for b in &all[i + 1..] {
                assert!(!overlap(*a, *b, g), "{a:?} and {b:?} overlap");
            }
        }
    }

    #[test]
    fn a_big_graph_is_drawn_compact_within_a_screen() {
        // A binary tree seven calls deep (255 services) whose leaves all use one database, and a
        // lone pair: the widest layer holds 128 nodes.
        let mut nodes: Vec<String> = (1..=255).map(|i| format!("svc-{i:03}")).collect();
        let mut calls = Vec::new();
        for i in 1..=127 {
            calls.push((format!("svc-{i:03}"), format!("svc-{:03}", 2 * i)));
            calls.push((format!("svc-{i:03}"), format!("svc-{:03}", 2 * i + 1)));
        }
        for i in 128..=255 {
            calls.push((format!("svc-{i:03}"), "postgresql/shop".to_owned()));
        }
        nodes.extend(["postgresql/shop", "lonely", "other"].map(String::from));
        calls.push(("lonely".into(), "other".into()));
        let laid = layout(&nodes, &calls).unwrap();
        assert_eq!(laid.geometry, Geometry::COMPACT);
        assert_eq!(laid.positions.len(), nodes.len());
        apart_and_inside(&laid);
        for (caller, callee) in &calls {
            let (from, to) = (laid.positions[caller], laid.positions[callee]);
            assert!(forward(from, to, laid.geometry), "{caller} → {callee} does not go right: {from:?} {to:?}");
        }
        // The graph view of a window 1440 × 900 px (1404 × 648) shows it at 0.9 of its size or
        // more: its 10-px labels at 9 px.
        let scale = (1404.0 / laid.width).min(648.0 / laid.height);
        assert!(scale >= 0.9, "{} × {} shown at {scale:.2}", laid.width, laid.height);
        // A call ends beside its callee, in the room between sub-columns.
        let g = laid.geometry;
        for (caller, callee) in &calls {
            let to = laid.positions[callee];
            let trunk = (to.0 - BUNDLE_LENGTH, to.0);
            let entry = to.1 + g.node_h / 2.0;
            for &(x, y) in laid.positions.values() {
                let beside = x < trunk.1 && trunk.0 < x + g.node_w && y < entry && entry < y + g.node_h;
                assert!(!beside, "{caller} → {callee} ends under the node at {x}, {y}");
            }
        }
    }

    #[test]
    fn cycles_and_lone_nodes_are_laid_out() {
        let nodes = names(&["a", "b", "c", "alone"]);
        let laid = layout(&nodes, &edges(&[("a", "b"), ("b", "c"), ("c", "a")])).unwrap();
        assert_eq!(laid.positions.len(), 4);
        assert!(layout(&nodes, &edges(&[("a", "nowhere")])).is_err());
    }

    /// The lowest and the leftmost point of the path `d` ("M x,y C x,y x,y x,y"), sampled.
    fn lowest_and_leftmost(d: &str) -> (f64, f64) {
        let numbers: Vec<f64> =
            d.split(['M', 'C', ',', ' ']).filter(|t| !t.is_empty()).map(|t| t.parse().unwrap()).collect();
        let p: Vec<(f64, f64)> = numbers.chunks(2).map(|xy| (xy[0], xy[1])).collect();
        let (mut lowest, mut leftmost) = (f64::MIN, f64::MAX);
        for step in 0..=1000 {
            let t = step as f64 / 1000.0;
            let u = 1.0 - t;
            let x = u * u * u * p[0].0 + 3.0 * u * u * t * p[1].0 + 3.0 * u * t * t * p[2].0 + t * t * t * p[3].0;
            let y = u * u * u * p[0].1 + 3.0 * u * u * t * p[1].1 + 3.0 * u * t * t * p[2].1 + t * t * t * p[3].1;
            lowest = lowest.max(y);
            leftmost = leftmost.min(x);
        }
        (lowest, leftmost)
    }

    #[test]
    fn calls_back_and_to_themselves_stay_inside_the_drawing() {
        // A cycle whose last call goes back to the first column, and a self-call on every node
        // (the lowest node's loops below it): small and compact drawings alike.
        let small = (names(&["a", "b", "c", "d"]), edges(&[("a", "b"), ("a", "c"), ("c", "d"), ("d", "a")]));
        let mut many: Vec<String> = (0..60).map(|i| format!("s{i:02}")).collect();
        let mut calls: Vec<(String, String)> = (1..60).map(|i| ("s00".to_owned(), format!("s{i:02}"))).collect();
        many.push("last".into());
        calls.push(("s59".into(), "last".into()));
        calls.push(("last".into(), "s00".into()));
        for (nodes, mut calls) in [small, (many, calls)] {
            calls.extend(nodes.iter().map(|n| (n.clone(), n.clone())));
            let laid = layout(&nodes, &calls).unwrap();
            let mut looped = 0;
            for (caller, callee) in &calls {
                let (from, to) = (laid.positions[caller], laid.positions[callee]);
                if forward(from, to, laid.geometry) {
                    continue;
                }
                looped += 1;
                let (d, _) = edge_path(from, to, false, laid.geometry);
                let (lowest, leftmost) = lowest_and_leftmost(&d);
                assert!(lowest + 3.0 <= laid.height, "{caller} → {callee} reaches {lowest:.1} of {}", laid.height);
                assert!(leftmost >= 0.0, "{caller} → {callee} reaches x {leftmost:.1}");
            }
            assert_eq!(looped, nodes.len() + 1, "{laid:?}");
        }
    }
}
