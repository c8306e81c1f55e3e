/// Small in-place edits of a graph that keep node indices, inputs and `output` consistent.
extension Graph {
    /// Indices of the nodes that read the value of node `index`, in graph order.
    public func users(of index: Int) -> [Int] {
        nodes.indices.filter { nodes[$0].inputs.contains(index) }
    }

    /// Makes every node that reads the value of node `old`, and the graph output, read node
    /// `new` instead. `new` must come before those readers so the order stays topological.
    public mutating func replaceUses(of old: Int, with new: Int) {
        for index in nodes.indices {
            for slot in nodes[index].inputs.indices where nodes[index].inputs[slot] == old {
                nodes[index].inputs[slot] = new
            }
        }
        if output == old {
            output = new
        }
    }

    /// Removes the nodes at `indices` and renumbers the inputs of the remaining nodes and the
    /// output. No remaining node and not the output may read a removed node: call
    /// `replaceUses(of:with:)` first.
    public mutating func removeNodes(_ indices: Set<Int>) {
        guard !indices.isEmpty else { return }
        // newIndex[i] is the index of node i after the removal, or nil for a removed node.
        var newIndex = [Int?](repeating: nil, count: nodes.count)
        var kept: [Node] = []
        kept.reserveCapacity(nodes.count - indices.count)
        for (index, node) in nodes.enumerated() where !indices.contains(index) {
            newIndex[index] = kept.count
            kept.append(node)
        }
        for index in kept.indices {
            kept[index].inputs = kept[index].inputs.map { input in
                guard let mapped = newIndex[input] else {
                    preconditionFailure("removeNodes: node \(kept[index].name) still reads removed node \(input)")
                }
                return mapped
            }
        }
        guard let mappedOutput = newIndex[output] else {
            preconditionFailure("removeNodes: the graph output \(output) is a removed node")
        }
        nodes = kept
        output = mappedOutput
    }

    /// Removes node `index`, whose value must be unused; see `removeNodes(_:)`.
    public mutating func removeNode(_ index: Int) {
        removeNodes([index])
    }
}
