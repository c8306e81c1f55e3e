/// Rewrites convolution weights into the order the generated kernels read, and records it in
/// each parameter's `layout` so the weight blob and the generated code agree.
///
///     %1 = conv1x1(%0)      [weight [64, 32, 1, 1] pytorch]
/// ->
///     %1 = conv1x1(%0)      [weight [64, 32, 1, 1] io]       values as [in 32][out 64]
///
/// Pointwise weights become `[in, out]` (`io`), depthwise weights `[kh, kw, C]` (`hwc`), other
/// convolutions `[kh, kw, in/groups, out]` (`hwio`). Squeeze-excite and linear weights keep
/// PyTorch's order. `shape` keeps PyTorch's order in every case.
public let packWeightsPass = Pass(name: "pack-weights",
                                  summary: "reorder convolution weights into the layout the kernels read",
                                  run: packWeights)

func packWeights(_ graph: Graph) throws -> Graph {
    var result = graph
    for index in result.nodes.indices {
        guard case .conv2d(let conv) = result.nodes[index].op,
              let position = result.nodes[index].parameters.firstIndex(where: { $0.role == "weight" }),
              result.nodes[index].parameters[position].layout == .pytorch else { continue }
        let layout: WeightLayout = conv.isPointwise ? .inputOutput : conv.isDepthwise ? .depthwiseHWC : .hwio
        let key = result.nodes[index].parameters[position].key
        if let tensor = result.constants[key] {
            result.constants[key] = Tensor(shape: tensor.shape, data: packConvolutionWeight(tensor.data, conv: conv, layout: layout))
        }
        result.nodes[index].parameters[position].layout = layout
    }
    return result
}

/// Reorders `[out, in/groups, kh, kw]` weights into `layout`, or back from it when `unpack`.
func packConvolutionWeight(_ weight: [Float], conv: Conv2D, layout: WeightLayout, unpack: Bool = false) -> [Float] {
    let outChannels = conv.outChannels, groupIn = conv.inChannels / conv.groups
    let kh = conv.kernelHeight, kw = conv.kernelWidth
    var packed = [Float](repeating: 0, count: weight.count)
    for o in 0..<outChannels {
        for i in 0..<groupIn {
            for y in 0..<kh {
                for x in 0..<kw {
                    let source = ((o * groupIn + i) * kh + y) * kw + x
                    let target: Int
                    switch layout {
                    case .pytorch: target = source
                    case .inputOutput: target = i * outChannels + o
                    case .depthwiseHWC: target = (y * kw + x) * outChannels + o
                    case .hwio: target = ((y * kw + x) * groupIn + i) * outChannels + o
                    }
                    if unpack {
                        packed[source] = weight[target]
                    } else {
                        packed[target] = weight[source]
                    }
                }
            }
        }
    }
    return packed
}
