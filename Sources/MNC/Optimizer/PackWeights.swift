/// Rewrites convolution weights into the order the generated kernels read, and records it in
/// each parameter's `layout` so the weight blob and the generated code agree.
///
///     %1 = conv1x1(%0)      [weight [64, 32, 1, 1] pytorch]
/// ->
///     %1 = conv1x1(%0)      [weight [64, 32, 1, 1] io_panels]  values as [2 panels][in 32][32 out]
///
/// Pointwise weights with stride 1 and no padding (the GEMM form) become 32-column panels of
/// `[in, out]` (`io_panels`), other pointwise weights `[in, out]` (`io`), depthwise weights
/// `[kh, kw, C]` (`hwc`), other convolutions `[kh, kw, in/groups, out]` (`hwio`).
/// The convolutions of a fused block are packed alike. Squeeze-excite and linear weights keep
/// PyTorch's order. `shape` keeps PyTorch's order in every case.
public let packWeightsPass = Pass(name: "pack-weights",
                                  summary: "reorder convolution weights into the layout the kernels read",
                                  run: packWeights)

func packWeights(_ graph: Graph) throws -> Graph {
    var result = graph
    for index in result.nodes.indices {
        let convolutions: [(role: String, conv: Conv2D)]
        switch result.nodes[index].op {
        case .conv2d(let conv): convolutions = [("weight", conv)]
        case .fusedBlock(let block): convolutions = block.stages.map { ("\($0.prefix).weight", $0.conv) }
        default: continue
        }
        for (role, conv) in convolutions {
            guard let position = result.nodes[index].parameters.firstIndex(where: { $0.role == role }),
                  result.nodes[index].parameters[position].layout == .pytorch else { continue }
            let layout = packedLayout(conv)
            let key = result.nodes[index].parameters[position].key
            if let tensor = result.constants[key] {
                result.constants[key] = Tensor(shape: tensor.shape, data: packConvolutionWeight(tensor.data, conv: conv, layout: layout))
            }
            result.nodes[index].parameters[position].layout = layout
        }
    }
    return result
}

/// Returns the weight layout the C kernels read for `conv`.
func packedLayout(_ conv: Conv2D) -> WeightLayout {
    if conv.isDepthwise { return .depthwiseHWC }
    guard conv.isPointwise else { return .hwio }
    let unpadded = conv.padding == Padding(top: 0, left: 0, bottom: 0, right: 0)
    return conv.strideHeight == 1 && conv.strideWidth == 1 && unpadded ? .inputOutputPanels : .inputOutput
}

/// Columns per panel of the `io_panels` layout: two AVX-512 vectors of floats.
let weightPanelWidth = 32

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
                    case .inputOutputPanels:
                        let panelStart = o - o % weightPanelWidth
                        let panelWidth = min(weightPanelWidth, outChannels - panelStart)
                        target = panelStart * groupIn + i * panelWidth + o - panelStart
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
