/// Static memory planning: every intermediate value of a graph gets a byte offset in one arena,
/// so that values alive at the same time never overlap.
///
/// Algorithm (greedy by size, first fit in address order):
/// 1. Storage roots. `flatten` and `dropout` produce no data of their own: their value is their
///    input's memory. The input node reads the caller's input buffer, and the output node (or
///    the root it aliases) is written to the caller's output buffer; neither lives in the arena.
/// 2. Lifetimes. Nodes run in graph order; step `i` runs node `i`. A root is live from the step
///    that defines it to the last step that reads it or any value aliasing it, both inclusive.
///    A node's scratch buffer is live during its own step only.
/// 3. Placement. Buffers are sorted by size, largest first (ties: earlier definition first). Each
///    takes the lowest aligned offset at which it overlaps no already placed buffer whose
///    lifetime intersects its own: the candidate offsets are 0 and the end of each such buffer.
/// 4. The arena size is the largest end offset. The lower bound for any plan of this schedule is
///    the largest total size of buffers live at one step; `verifyPlan` checks the result.
public struct ArenaPlan: Equatable {
    public enum Storage: Equatable {
        case input
        case output
        case arena(offset: Int)
    }

    /// One value (or scratch area) placed in the arena.
    public struct Buffer: Equatable {
        /// The node that defines the value, or whose scratch area this is.
        public var node: Int
        public var isScratch: Bool
        public var offset: Int
        public var size: Int
        /// First and last step (node index) at which the buffer is live, inclusive.
        public var firstStep: Int
        public var lastStep: Int
    }

    /// Byte alignment of every offset and of the arena itself.
    public var alignment: Int
    /// Arena size in bytes.
    public var size: Int
    public var buffers: [Buffer]
    /// Where each node's value is stored, after alias resolution.
    public var storage: [Storage]
    /// The byte offset of each node's scratch area, for nodes that requested one.
    public var scratchOffset: [Int: Int]
    /// Sum of all buffer sizes: the arena size without any reuse.
    public var totalBufferBytes: Int
    /// The largest total size of buffers live at one step: no plan for this order can be smaller.
    public var lowerBound: Int
}

/// Plans the arena for `graph`. `scratchBytes` gives the temporary bytes a node needs while it
/// runs (0 for none); `alignment` must be a power of two.
public func planArena(_ graph: Graph, alignment: Int = 64, scratchBytes: (Node) -> Int = { _ in 0 }) -> ArenaPlan {
    let count = graph.nodes.count

    // 1. Storage roots.
    var root = Array(0..<count)
    for (index, node) in graph.nodes.enumerated() {
        switch node.op {
        case .flatten, .dropout: root[index] = root[node.inputs[0]]
        default: break
        }
    }
    let outputRoot = root[graph.output]

    // 2. Lifetimes of arena roots.
    var lastUse = Array(0..<count)
    for (index, node) in graph.nodes.enumerated() {
        for input in node.inputs {
            lastUse[root[input]] = max(lastUse[root[input]], index)
        }
    }
    var buffers: [ArenaPlan.Buffer] = []
    for index in 0..<count where root[index] == index && index != 0 && index != outputRoot {
        let bytes = align(graph.nodes[index].elementCount * 4, alignment)
        buffers.append(ArenaPlan.Buffer(node: index, isScratch: false, offset: 0, size: bytes,
                                        firstStep: index, lastStep: lastUse[index]))
    }
    for (index, node) in graph.nodes.enumerated() {
        let bytes = scratchBytes(node)
        if bytes > 0 {
            buffers.append(ArenaPlan.Buffer(node: index, isScratch: true, offset: 0, size: align(bytes, alignment),
                                            firstStep: index, lastStep: index))
        }
    }

    // 3. Placement, largest first.
    let order = buffers.indices.sorted { a, b in
        buffers[a].size != buffers[b].size ? buffers[a].size > buffers[b].size : buffers[a].firstStep < buffers[b].firstStep
    }
    var placed: [Int] = []
    for candidate in order {
        let buffer = buffers[candidate]
        let conflicts = placed.map { buffers[$0] }
            .filter { $0.firstStep <= buffer.lastStep && buffer.firstStep <= $0.lastStep }
            .sorted { $0.offset < $1.offset }
        var offset = 0
        for other in conflicts {
            if offset + buffer.size <= other.offset { break }
            offset = max(offset, other.offset + other.size)
        }
        buffers[candidate].offset = offset
        placed.append(candidate)
    }

    // 4. Sizes and the result.
    var storage = [ArenaPlan.Storage](repeating: .input, count: count)
    var scratchOffset: [Int: Int] = [:]
    var valueOffset: [Int: Int] = [:]
    for buffer in buffers {
        if buffer.isScratch { scratchOffset[buffer.node] = buffer.offset } else { valueOffset[buffer.node] = buffer.offset }
    }
    for index in 0..<count {
        let r = root[index]
        if r == 0 { storage[index] = .input } else if r == outputRoot { storage[index] = .output } else {
            storage[index] = .arena(offset: valueOffset[r] ?? 0)
        }
    }
    var lowerBound = 0
    for step in 0..<count {
        let live = buffers.filter { $0.firstStep <= step && step <= $0.lastStep }.reduce(0) { $0 + $1.size }
        lowerBound = max(lowerBound, live)
    }
    return ArenaPlan(alignment: alignment,
                     size: buffers.map { $0.offset + $0.size }.max() ?? 0,
                     buffers: buffers.sorted { ($0.firstStep, $0.isScratch ? 1 : 0) < ($1.firstStep, $1.isScratch ? 1 : 0) },
                     storage: storage, scratchOffset: scratchOffset,
                     totalBufferBytes: buffers.reduce(0) { $0 + $1.size }, lowerBound: lowerBound)
}

/// Checks that no two buffers live at the same step overlap in the arena, that every buffer
/// fits in it, and that offsets are aligned. O(N²) in the number of buffers.
public func verifyPlan(_ plan: ArenaPlan) throws {
    for (i, a) in plan.buffers.enumerated() {
        guard a.offset >= 0, a.offset % plan.alignment == 0, a.offset + a.size <= plan.size else {
            throw MNCError("arena plan: buffer of node \(a.node) at offset \(a.offset), size \(a.size) is misaligned or outside the \(plan.size)-byte arena")
        }
        for b in plan.buffers[(i + 1)...] {
            let liveTogether = a.firstStep <= b.lastStep && b.firstStep <= a.lastStep
            let overlap = a.offset < b.offset + b.size && b.offset < a.offset + a.size
            if liveTogether && overlap {
                throw MNCError("arena plan: buffers of nodes \(a.node) and \(b.node) are live together (steps \(a.firstStep)...\(a.lastStep) and \(b.firstStep)...\(b.lastStep)) and overlap at offsets \(a.offset) and \(b.offset)")
            }
        }
    }
}

func align(_ value: Int, _ alignment: Int) -> Int {
    (value + alignment - 1) / alignment * alignment
}
