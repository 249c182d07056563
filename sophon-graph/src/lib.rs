//! Graph algorithms shared by sophon's runtime builder and its `agent_system!` macro, so that
//! both refuse exactly the same graphs. Internal to sophon: use `sophon` itself.

/// Finds the cycles of a directed graph: one per strongly connected component that has a cycle,
/// each given as the nodes along it in order, starting from its lowest-numbered node. The
/// cycles are sorted by that node.
pub fn cycles(nodes: usize, edges: &[(usize, usize)]) -> Vec<Vec<usize>> {
    let mut adjacent = vec![Vec::new(); nodes];
    for &(from, to) in edges {
        adjacent[from].push(to);
    }
    let mut found: Vec<Vec<usize>> =
        tarjan(&adjacent).into_iter().filter_map(|component| cycle_in(&adjacent, &component)).collect();
    found.sort();
    found
}

/// The strongly connected components of a directed graph, each a list of nodes, in reverse
/// topological order: a component comes after every component its edges lead to (sinks first).
pub fn components(nodes: usize, edges: &[(usize, usize)]) -> Vec<Vec<usize>> {
    let mut adjacent = vec![Vec::new(); nodes];
    for &(from, to) in edges {
        adjacent[from].push(to);
    }
    tarjan(&adjacent)
}

/// Tarjan's strongly connected components, iterative so that long chains cannot overflow the
/// stack.
fn tarjan(adjacent: &[Vec<usize>]) -> Vec<Vec<usize>> {
    const UNSEEN: usize = usize::MAX;
    let n = adjacent.len();
    let (mut index, mut low, mut on_stack) = (vec![UNSEEN; n], vec![0; n], vec![false; n]);
    let (mut stack, mut result, mut next) = (Vec::new(), Vec::new(), 0);
    for root in 0..n {
        if index[root] != UNSEEN {
            continue;
        }
        let mut calls = vec![(root, 0usize)];
        index[root] = next;
        low[root] = next;
        next += 1;
        stack.push(root);
        on_stack[root] = true;
        while let Some(&(v, child)) = calls.last() {
            if let Some(&w) = adjacent[v].get(child) {
                calls.last_mut().expect("not empty").1 += 1;
                if index[w] == UNSEEN {
                    index[w] = next;
                    low[w] = next;
                    next += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    calls.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
            } else {
                calls.pop();
                if let Some(&(parent, _)) = calls.last() {
                    low[parent] = low[parent].min(low[v]);
                }
                if low[v] == index[v] {
                    let mut component = Vec::new();
                    loop {
                        let w = stack.pop().expect("v is on the stack");
                        on_stack[w] = false;
                        component.push(w);
                        if w == v {
                            break;
                        }
                    }
                    result.push(component);
                }
            }
        }
    }
    result
}

/// A shortest cycle through the lowest node of a component, if the component has a cycle.
fn cycle_in(adjacent: &[Vec<usize>], component: &[usize]) -> Option<Vec<usize>> {
    let start = *component.iter().min()?;
    if component.len() == 1 && !adjacent[start].contains(&start) {
        return None;
    }
    let inside: std::collections::HashSet<usize> = component.iter().copied().collect();
    let mut parent = std::collections::HashMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for &w in &adjacent[v] {
            if w == start {
                let mut path = vec![v];
                let mut at = v;
                while at != start {
                    at = parent[&at];
                    path.push(at);
                }
                path.reverse();
                return Some(path);
            }
            if inside.contains(&w) && !parent.contains_key(&w) {
                parent.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    unreachable!("a strongly connected component with an edge has a cycle through each node")
}

#[cfg(test)]
mod tests {
    use super::{components, cycles};

    #[test]
    fn components_come_sinks_first() {
        // 0 -> {1 <-> 2} -> 3, and 4 alone.
        let found = components(5, &[(0, 1), (1, 2), (2, 1), (2, 3)]);
        let position = |n: usize| found.iter().position(|c| c.contains(&n)).unwrap();
        assert_eq!(found.len(), 4);
        assert_eq!(position(1), position(2));
        assert!(position(3) < position(1) && position(1) < position(0));
    }

    #[test]
    fn acyclic_graphs_have_no_cycles() {
        assert!(cycles(4, &[(0, 1), (1, 2), (2, 3), (0, 3)]).is_empty());
        assert!(cycles(0, &[]).is_empty());
    }

    #[test]
    fn self_loop_is_a_cycle() {
        assert_eq!(cycles(2, &[(0, 1), (1, 1)]), vec![vec![1]]);
    }

    #[test]
    fn cycle_is_named_in_order_from_its_first_node() {
        assert_eq!(cycles(4, &[(3, 1), (1, 2), (2, 3), (0, 1)]), vec![vec![1, 2, 3]]);
    }

    #[test]
    fn each_component_reports_one_shortest_cycle() {
        let edges = [(0, 1), (1, 0), (1, 2), (2, 0), (3, 4), (4, 3)];
        assert_eq!(cycles(5, &edges), vec![vec![0, 1], vec![3, 4]]);
    }

    #[test]
    fn long_chain_does_not_overflow() {
        let n = 200_000;
        let mut edges: Vec<_> = (0..n - 1).map(|i| (i, i + 1)).collect();
        edges.push((n - 1, 0));
        assert_eq!(cycles(n, &edges)[0].len(), n);
    }
}

pub mod draw;
