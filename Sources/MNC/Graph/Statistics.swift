/// Parameter and multiply-accumulate counts, as `mnc check` reports them.
///
/// Parameters count trainable values only (convolution and linear weights and biases, BatchNorm
/// weight and bias), not BatchNorm running statistics. MACs count convolutions and fully
/// connected layers; element-wise ops, pooling and activations are not counted.
extension Node {
    public var trainableParameterCount: Int {
        parameters.filter(\.trainable).reduce(0) { $0 + $1.elementCount }
    }

    public var multiplyAccumulates: Int {
        switch op {
        case .conv2d(let conv):
            let perOutput = (conv.inChannels / conv.groups) * conv.kernelHeight * conv.kernelWidth
            return elementCount * perOutput
        case .linear(let linear):
            return linear.inFeatures * linear.outFeatures
        case .squeezeExcite(let se):
            return 2 * se.channels * se.squeezeChannels
        case .fusedBlock(let block):
            let pixels = shape[2] * shape[3], depthwise = block.depthwise
            var total = pixels * depthwise.outChannels * depthwise.kernelHeight * depthwise.kernelWidth
                + pixels * block.project.inChannels * block.project.outChannels
            if let se = block.squeezeExcite {
                total += 2 * se.channels * se.squeezeChannels
            }
            if let expand = block.expand {
                total += block.expandedHeight * block.expandedWidth * expand.outChannels
                    * expand.inChannels * expand.kernelHeight * expand.kernelWidth
            }
            return total
        default:
            return 0
        }
    }
}

extension Graph {
    public var trainableParameterCount: Int { nodes.reduce(0) { $0 + $1.trainableParameterCount } }
    public var multiplyAccumulates: Int { nodes.reduce(0) { $0 + $1.multiplyAccumulates } }
}
