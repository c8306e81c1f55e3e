/// Rewrites a graph in place by redirecting uses and dropping nodes, then renumbers it.
///
/// Passes edit nodes by index while the indices stay stable, and `finish()` removes the dropped
/// nodes and remaps every input and the output index in one step at the end.
struct GraphEditor {
    var graph: Graph
    private(set) var removed = Set<Int>()

    init(_ graph: Graph) {
        self.graph = graph
    }

    /// The nodes that read `index`, in graph order.
    func users(of index: Int) -> [Int] {
        graph.nodes.indices.filter { !removed.contains($0) && graph.nodes[$0].inputs.contains(index) }
    }

    /// True when exactly one node reads `index` and it is not the graph output.
    func hasSingleUser(_ index: Int) -> Bool {
        users(of: index).count == 1 && graph.output != index
    }

    /// Makes every reader of `old` (and the graph output) read `new` instead.
    mutating func replaceUses(of old: Int, with new: Int) {
        graph.replaceUses(of: old, with: new)
    }

    mutating func remove(_ index: Int) {
        removed.insert(index)
    }

    /// Returns the graph without the removed nodes, inputs renumbered, and without the
    /// constants that no remaining parameter binds.
    func finish() -> Graph {
        var result = graph
        result.removeNodes(removed)
        let usedKeys = Set(result.nodes.flatMap { $0.parameters.map(\.key) })
        result.constants = result.constants.filter { usedKeys.contains($0.key) }
        return result
    }
}
