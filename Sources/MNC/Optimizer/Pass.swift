/// A graph-to-graph transformation with a name for `--disable-pass` and the dumps.
public struct Pass {
    public var name: String
    public var summary: String
    public var run: (Graph) throws -> Graph

    public init(name: String, summary: String, run: @escaping (Graph) throws -> Graph) {
        self.name = name
        self.summary = summary
        self.run = run
    }
}

/// The default pipeline, in order. Each pass expects the ones before it to have run where its
/// pattern is built from their output (squeeze-excite fusion matches fused activations).
public let defaultPasses: [Pass] = [
    foldBatchNormPass,
    fuseActivationPass,
    fuseResidualAddPass,
    fuseSqueezeExcitePass,
    removeIdentityPass,
    fuseInvertedResidualPass,
    packWeightsPass,
]

/// Runs the pipeline for an optimization level: 0 runs no pass, 1 and above run all of them,
/// except those named in `disabled`. The verifier runs after every pass when `verifyEach` is
/// true (the default in debug builds), naming the pass that broke the graph.
public func optimize(_ graph: Graph, level: Int = 2, disabled: Set<String> = [],
                     verifyEach: Bool = verifyAfterEachPassByDefault) throws -> Graph {
    let unknown = disabled.subtracting(defaultPasses.map(\.name))
    guard unknown.isEmpty else {
        throw MNCError("unknown pass '\(unknown.sorted()[0])' in --disable-pass: expected one of \(defaultPasses.map(\.name).joined(separator: ", "))")
    }
    guard level > 0 else { return graph }
    var current = graph
    for pass in defaultPasses where !disabled.contains(pass.name) {
        current = try pass.run(current)
        if verifyEach {
            try verify(current, after: pass.name)
        }
    }
    return current
}

#if DEBUG
public let verifyAfterEachPassByDefault = true
#else
public let verifyAfterEachPassByDefault = false
#endif
