//! A system's graph as text: Mermaid (for Markdown) and Graphviz DOT. The macro draws the
//! declared graph at compile time and a running system draws its own, with live figures, through
//! the same code, so that both look alike.

use std::fmt::Write;

/// What a node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// An entity.
    Entity,
    /// A group of entities of one kind, drawn as one node.
    Group,
    /// An output: a channel out of the system.
    Output,
    /// An entity served by replicas, each drawn as an entity it points to.
    Replicated,
}

/// What an edge is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EdgeKind {
    /// `a -> b`
    Query,
    /// `a ~> b`
    Read,
    /// `loop a -> b`
    Loop,
    /// `a -> output(name)`
    Output,
    /// From a replicated entity to one of its replicas.
    Replica,
}

/// One node: its name and, under it, lines of figures (live ones, for a running system).
#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub kind: NodeKind,
    pub figures: Vec<String>,
}

/// One edge between nodes (indices into [`Drawing::nodes`]), with the output port it leaves
/// from and figures, if any.
#[derive(Clone, Debug)]
pub struct Edge {
    pub from: usize,
    pub to: usize,
    pub kind: EdgeKind,
    pub port: Option<String>,
    pub figures: Vec<String>,
}

/// A graph to draw.
#[derive(Clone, Debug, Default)]
pub struct Drawing {
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

/// Escapes text for a double-quoted Mermaid label.
fn mermaid_text(text: &str) -> String {
    text.replace('"', "#quot;").replace('<', "#lt;").replace('>', "#gt;")
}

/// Escapes text for a double-quoted DOT string.
fn dot_text(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

fn edge_label(edge: &Edge) -> Vec<String> {
    let mut label = Vec::new();
    if let Some(port) = &edge.port {
        label.push(format!(".{port}"));
    }
    if edge.kind == EdgeKind::Loop {
        label.push("loop".to_string());
    }
    label.extend(edge.figures.iter().cloned());
    label
}

impl Drawing {
    /// The graph as a Mermaid flowchart, left to right: entities as boxes, groups as stacked
    /// boxes, outputs as rounded ones, replicated entities as hexagons; query edges solid, read
    /// edges dotted, loops thick, a replicated entity's edges to its replicas ending in a circle.
    pub fn mermaid(&self) -> String {
        let mut out = String::from("flowchart LR\n");
        for (i, node) in self.nodes.iter().enumerate() {
            let mut label = mermaid_text(&node.name);
            for line in &node.figures {
                label.push_str("<br/>");
                label.push_str(&mermaid_text(line));
            }
            let (open, close) = match node.kind {
                NodeKind::Entity => ("[", "]"),
                NodeKind::Group => ("[[", "]]"),
                NodeKind::Output => ("([", "])"),
                NodeKind::Replicated => ("{{", "}}"),
            };
            let _ = writeln!(out, "    n{i}{open}\"{label}\"{close}");
        }
        for edge in &self.edges {
            let arrow = match edge.kind {
                EdgeKind::Query | EdgeKind::Output => "-->",
                EdgeKind::Read => "-.->",
                EdgeKind::Loop => "==>",
                EdgeKind::Replica => "--o",
            };
            let label = edge_label(edge);
            if label.is_empty() {
                let _ = writeln!(out, "    n{} {arrow} n{}", edge.from, edge.to);
            } else {
                let label = label.iter().map(|l| mermaid_text(l)).collect::<Vec<_>>().join(" ");
                let _ = writeln!(out, "    n{} {arrow}|\"{label}\"| n{}", edge.from, edge.to);
            }
        }
        out
    }

    /// The graph in Graphviz's DOT language, left to right, drawn as [`mermaid`](Self::mermaid)
    /// draws it.
    pub fn dot(&self) -> String {
        let mut out = String::from("digraph {\n    rankdir=LR;\n");
        for (i, node) in self.nodes.iter().enumerate() {
            let mut label = dot_text(&node.name);
            for line in &node.figures {
                label.push_str("\\n");
                label.push_str(&dot_text(line));
            }
            let shape = match node.kind {
                NodeKind::Entity => "shape=box",
                NodeKind::Group => "shape=box3d",
                NodeKind::Output => "shape=box, style=rounded",
                NodeKind::Replicated => "shape=hexagon",
            };
            let _ = writeln!(out, "    n{i} [label=\"{label}\", {shape}];");
        }
        for edge in &self.edges {
            let style = match edge.kind {
                EdgeKind::Query | EdgeKind::Output => "",
                EdgeKind::Read => ", style=dashed",
                EdgeKind::Loop => ", style=bold",
                EdgeKind::Replica => ", style=dotted, arrowhead=odot",
            };
            let label = edge_label(edge).iter().map(|l| dot_text(l)).collect::<Vec<_>>().join(" ");
            let _ = writeln!(out, "    n{} -> n{} [label=\"{label}\"{style}];", edge.from, edge.to);
        }
        out.push_str("}\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Drawing {
        let node = |name: &str, kind| Node { name: name.to_string(), kind, figures: Vec::new() };
        Drawing {
            nodes: vec![
                node("split", NodeKind::Entity),
                node("workers[n]", NodeKind::Group),
                node("answers", NodeKind::Output),
            ],
            edges: vec![
                Edge { from: 0, to: 1, kind: EdgeKind::Query, port: None, figures: Vec::new() },
                Edge { from: 1, to: 0, kind: EdgeKind::Read, port: Some("done".into()), figures: Vec::new() },
                Edge { from: 1, to: 2, kind: EdgeKind::Output, port: None, figures: vec!["7 sent".into()] },
            ],
        }
    }

    #[test]
    fn mermaid_draws_each_kind_of_node_and_edge() {
        assert_eq!(
            sample().mermaid(),
            "flowchart LR\n    n0[\"split\"]\n    n1[[\"workers[n]\"]]\n    n2([\"answers\"])\n    n0 --> n1\n    n1 -.->|\".done\"| n0\n    n1 -->|\"7 sent\"| n2\n"
        );
    }

    #[test]
    fn dot_draws_each_kind_of_node_and_edge() {
        assert_eq!(
            sample().dot(),
            "digraph {\n    rankdir=LR;\n    n0 [label=\"split\", shape=box];\n    n1 [label=\"workers[n]\", shape=box3d];\n    n2 [label=\"answers\", shape=box, style=rounded];\n    n0 -> n1 [label=\"\"];\n    n1 -> n0 [label=\".done\", style=dashed];\n    n1 -> n2 [label=\"7 sent\"];\n}\n"
        );
    }

    #[test]
    fn quotes_in_names_are_escaped() {
        let drawing = Drawing {
            nodes: vec![Node { name: "a\"b<c>".into(), kind: NodeKind::Entity, figures: vec!["x\\y".into()] }],
            edges: Vec::new(),
        };
        assert!(drawing.mermaid().contains("n0[\"a#quot;b#lt;c#gt;<br/>x\\y\"]"));
        assert!(drawing.dot().contains("label=\"a\\\"b<c>\\nx\\\\y\""));
    }
}
