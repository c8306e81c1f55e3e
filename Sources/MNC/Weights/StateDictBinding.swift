/// Binds a state-dict weights file (safetensors or PyTorch `.pth`) to a graph by key.
///
/// Every parameter key of the graph must be present with exactly the parameter's shape. Keys
/// that the graph does not use are an error, except BatchNorm's `num_batches_tracked`
/// counters, which inference does not need. All missing and unexpected keys are reported at
/// once, so one run shows everything that does not fit.
public func bindStateDict(_ file: WeightFile, to graph: Graph) throws -> Graph {
    var tensors: [String: WeightTensor] = [:]
    for tensor in file.tensors {
        guard tensors[tensor.name] == nil else {
            throw MNCError("\(file.path): duplicate key '\(tensor.name)'")
        }
        tensors[tensor.name] = tensor
    }

    var bound = graph
    var missing: [String] = []
    var mismatched: [String] = []
    var used = Set<String>()
    for node in graph.nodes {
        for parameter in node.parameters {
            guard let tensor = tensors[parameter.key] else {
                missing.append(parameter.key)
                continue
            }
            used.insert(parameter.key)
            guard tensor.shape == parameter.shape else {
                mismatched.append("'\(parameter.key)' has shape \(formatDimensions(tensor.shape)) in the file, the graph expects \(formatDimensions(parameter.shape)) (layer \(node.layer))")
                continue
            }
            bound.constants[parameter.key] = Tensor(shape: tensor.shape, data: tensor.data)
        }
    }

    let unexpected = file.tensors.map(\.name).filter { !used.contains($0) && !$0.hasSuffix("num_batches_tracked") }
    if !missing.isEmpty || !unexpected.isEmpty || !mismatched.isEmpty {
        var parts: [String] = []
        if !mismatched.isEmpty {
            // The first few mismatches name the problem; a wrong width multiplier mismatches them all.
            let shown = mismatched.prefix(5).joined(separator: ", ")
            let more = mismatched.count > 5 ? " and \(mismatched.count - 5) more" : ""
            parts.append("\(mismatched.count) shape mismatch\(mismatched.count == 1 ? "" : "es"): \(shown)\(more)")
        }
        if !missing.isEmpty {
            parts.append("\(missing.count) missing key\(missing.count == 1 ? "" : "s"): \(missing.joined(separator: ", "))")
        }
        if !unexpected.isEmpty {
            parts.append("\(unexpected.count) unexpected key\(unexpected.count == 1 ? "" : "s"): \(unexpected.joined(separator: ", "))")
        }
        throw MNCError("\(file.path) does not match the graph of '\(graph.name)': \(parts.joined(separator: "; ")). Check the spec, --width-multiplier and --classes against the model the weights came from")
    }
    try checkFiniteConstants(bound, file: file.path)
    try verify(bound)
    return bound
}
