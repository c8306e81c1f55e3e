/// The graph IR: tensor ops with static shapes, in topological order.
///
/// Every node produces exactly one value, identified by the node's index in `Graph.nodes`.
/// Shapes are logical and include the batch dimension, which is always 1:
/// feature maps are `[1, C, H, W]` (NCHW) and vectors are `[1, N]`. Backends choose their own
/// memory layout; the shapes here only fix the meaning of each value.

/// An element-wise activation function.
public enum Activation: String, CaseIterable, Equatable, Hashable {
    case identity
    case relu
    case relu6
    /// `x * relu6(x + 3) / 6`
    case hardswish
    /// PyTorch form: `relu6(x + 3) / 6`
    case hardsigmoid
    /// Keras 2 and Paddle form: `clip(0.2 * x + 0.5, 0, 1)`
    case hardsigmoidLinear = "hardsigmoid_linear"

    public func apply(_ x: Float) -> Float {
        switch self {
        case .identity: return x
        case .relu: return max(x, 0)
        case .relu6: return min(max(x, 0), 6)
        case .hardswish: return x * (min(max(x + 3, 0), 6) / 6)
        case .hardsigmoid: return min(max(x + 3, 0), 6) / 6
        case .hardsigmoidLinear: return min(max(0.2 * x + 0.5, 0), 1)
        }
    }
}

/// Zero padding added to a feature map before a convolution, in pixels.
public struct Padding: Equatable, Hashable, CustomStringConvertible {
    public var top: Int
    public var left: Int
    public var bottom: Int
    public var right: Int

    public init(top: Int, left: Int, bottom: Int, right: Int) {
        self.top = top
        self.left = left
        self.bottom = bottom
        self.right = right
    }

    public var description: String {
        if top == bottom && left == right && top == left { return "\(top)" }
        return "(\(top),\(left),\(bottom),\(right))"
    }
}

/// A 2-D convolution, with the epilogue that fusion passes may attach to it.
///
/// Weight shape `[outChannels, inChannels / groups, kernelHeight, kernelWidth]` (PyTorch order).
/// Output: `activation(conv(x) + bias) + residual`, where `residual` is the optional second input.
public struct Conv2D: Equatable {
    public var inChannels: Int
    public var outChannels: Int
    public var kernelHeight: Int
    public var kernelWidth: Int
    public var strideHeight: Int
    public var strideWidth: Int
    public var padding: Padding
    public var groups: Int
    public var hasBias: Bool
    public var activation: Activation = .identity
    /// True when the node's second input is added after the activation (a fused residual add).
    public var hasResidual: Bool = false

    public init(inChannels: Int, outChannels: Int, kernelHeight: Int, kernelWidth: Int,
                strideHeight: Int, strideWidth: Int, padding: Padding, groups: Int, hasBias: Bool) {
        self.inChannels = inChannels
        self.outChannels = outChannels
        self.kernelHeight = kernelHeight
        self.kernelWidth = kernelWidth
        self.strideHeight = strideHeight
        self.strideWidth = strideWidth
        self.padding = padding
        self.groups = groups
        self.hasBias = hasBias
    }

    public var isDepthwise: Bool { groups > 1 && groups == inChannels && inChannels == outChannels }
    public var isPointwise: Bool { kernelHeight == 1 && kernelWidth == 1 && groups == 1 }
    public var weightShape: [Int] { [outChannels, inChannels / groups, kernelHeight, kernelWidth] }
}

/// A fully-connected layer on a `[1, N]` vector; weight shape `[outFeatures, inFeatures]`.
public struct Linear: Equatable {
    public var inFeatures: Int
    public var outFeatures: Int
    public var hasBias: Bool
    public var activation: Activation = .identity

    public init(inFeatures: Int, outFeatures: Int, hasBias: Bool) {
        self.inFeatures = inFeatures
        self.outFeatures = outFeatures
        self.hasBias = hasBias
    }
}

/// A fused squeeze-excitation block on a `[1, C, H, W]` input:
/// `x * gate(fc2(activation(fc1(mean_hw(x)))))`, where fc1 and fc2 are 1×1 convolutions with bias.
/// Parameters: `fc1.weight [squeeze, C, 1, 1]`, `fc1.bias`, `fc2.weight [C, squeeze, 1, 1]`, `fc2.bias`.
public struct SqueezeExcite: Equatable {
    public var channels: Int
    public var squeezeChannels: Int
    public var activation: Activation
    public var gate: Activation

    public init(channels: Int, squeezeChannels: Int, activation: Activation, gate: Activation) {
        self.channels = channels
        self.squeezeChannels = squeezeChannels
        self.activation = activation
        self.gate = gate
    }
}

/// A fused inverted-residual block (MobileNetV2's bottleneck, MobileNetV3's block) or
/// depthwise-separable block: an optional expansion convolution, a depthwise convolution, an
/// optional squeeze-excitation and a 1×1 projection, run by one op so that backends can stream
/// the block a few rows at a time and never store the expanded tensor whole. Each convolution
/// keeps its own bias and activation; `project` may carry the residual add.
///
/// `expand` is a convolution with groups 1: the 1×1 expansion (stride 1, no padding), or any
/// other groups-1 convolution (such as a network's first 3×3 convolution feeding the first
/// block). Parameters: `expand.weight` and `expand.bias` (with `expand`), `depthwise.weight`,
/// `depthwise.bias`, `se.fc1.weight`, `se.fc1.bias`, `se.fc2.weight`, `se.fc2.bias` (with
/// `squeezeExcite`, as that op names them after `se.`), `project.weight`, `project.bias`
/// (biases when the convolution has one). Inputs: x, and the residual when `project.hasResidual`.
public struct FusedBlock: Equatable {
    public var expand: Conv2D?
    public var depthwise: Conv2D
    /// The squeeze-excitation on the depthwise output, before the projection.
    public var squeezeExcite: SqueezeExcite?
    public var project: Conv2D
    /// The height and width of the depthwise convolution's input (the expanded tensor).
    public var expandedHeight: Int
    public var expandedWidth: Int

    public init(expand: Conv2D?, depthwise: Conv2D, squeezeExcite: SqueezeExcite? = nil, project: Conv2D,
                expandedHeight: Int, expandedWidth: Int) {
        self.expand = expand
        self.depthwise = depthwise
        self.squeezeExcite = squeezeExcite
        self.project = project
        self.expandedHeight = expandedHeight
        self.expandedWidth = expandedWidth
    }

    /// The convolutions in execution order, with the parameter-role prefix of each.
    public var stages: [(prefix: String, conv: Conv2D)] {
        (expand.map { [("expand", $0)] } ?? []) + [("depthwise", depthwise), ("project", project)]
    }
}

public enum Op: Equatable {
    /// The network input, `[1, C, H, W]`.
    case input
    /// Parameters `weight`, optional `bias`. Inputs: x, and the residual when `hasResidual`.
    case conv2d(Conv2D)
    /// Inference BatchNorm: `(x - running_mean) / sqrt(running_var + epsilon) * weight + bias`.
    case batchNorm(epsilon: Float)
    case activation(Activation)
    /// Element-wise sum of two values of the same shape.
    case add
    /// Mean over H and W: `[1, C, H, W]` to `[1, C, 1, 1]`.
    case globalAveragePool
    /// `[1, C, 1, 1]` to `[1, C]`.
    case flatten
    /// Parameters `weight`, optional `bias`.
    case linear(Linear)
    /// Identity at inference; the training drop probability is kept for the dumps.
    case dropout(probability: Float)
    /// `x * scale` with `x` `[1, C, H, W]` and `scale` `[1, C, 1, 1]` broadcast over H and W.
    case channelScale
    case squeezeExcite(SqueezeExcite)
    case fusedBlock(FusedBlock)

    /// The op's name in dumps and error messages.
    public var mnemonic: String {
        switch self {
        case .input: return "input"
        case .conv2d(let conv):
            if conv.isDepthwise { return "depthwise\(conv.kernelHeight)x\(conv.kernelWidth)" }
            return "conv\(conv.kernelHeight)x\(conv.kernelWidth)"
        case .batchNorm: return "bn"
        case .activation(let kind): return kind.rawValue
        case .add: return "add"
        case .globalAveragePool: return "global_avgpool"
        case .flatten: return "flatten"
        case .linear: return "linear"
        case .dropout: return "dropout"
        case .channelScale: return "channel_scale"
        case .squeezeExcite: return "squeeze_excite"
        case .fusedBlock: return "fused_block"
        }
    }
}

/// A parameter tensor of a node and the key it binds to in a weights file.
public struct Parameter: Equatable {
    /// The node-local role: `weight`, `bias`, `running_mean`, `running_var`, `fc1.weight`, ...
    public var role: String
    /// The weights-file key, e.g. `features.1.conv.0.0.weight` (torchvision's `state_dict` key).
    public var key: String
    public var shape: [Int]
    /// True for parameters that training updates (counted by `mnc check`); false for
    /// BatchNorm running statistics.
    public var trainable: Bool
    /// The memory order of the bound values. Spec lowering and binding produce PyTorch's order
    /// (`OIHW` for convolution weights, `OI` for linear weights, `C` for vectors); the
    /// weight-packing pass rewrites constants into the order the kernels read and records it here.
    public var layout: WeightLayout = .pytorch

    public init(role: String, key: String, shape: [Int], trainable: Bool = true) {
        self.role = role
        self.key = key
        self.shape = shape
        self.trainable = trainable
    }

    public var elementCount: Int { shape.reduce(1, *) }
}

/// The memory order of a parameter's values. `shape` always stays in PyTorch's order; the
/// layout says how the same values are laid out in `Graph.constants` and in the weight blob.
public enum WeightLayout: String, Equatable {
    /// PyTorch's order: `[out, in / groups, kh, kw]` for convolutions, `[out, in]` for linear.
    case pytorch
    /// Pointwise (1×1, groups 1) convolution weights as `[in, out]`: a GEMM's B matrix for NHWC.
    case inputOutput = "io"
    /// Pointwise weights as column panels of the `io` matrix, `[out / 32][in][32]`, then, when 32
    /// does not divide `out`, a last panel `[in][out % 32]`. A GEMM micro-kernel reads one
    /// panel's rows as one contiguous stream. No padding: the values fill `in · out` floats.
    case inputOutputPanels = "io_panels"
    /// Depthwise weights as `[kh, kw, channels]`: channels innermost for NHWC.
    case depthwiseHWC = "hwc"
    /// Other convolution weights as `[kh, kw, in / groups, out]`.
    case hwio
}

public struct Node: Equatable {
    public var op: Op
    /// Indices of the nodes whose values this node reads, in the order the op defines.
    public var inputs: [Int]
    /// The output shape, `[1, C, H, W]` or `[1, N]`.
    public var shape: [Int]
    public var parameters: [Parameter]
    /// The module path of this node, e.g. `features.3.conv.1.0`.
    public var name: String
    /// The spec layer this node came from, e.g. `features.3`; error messages name it.
    public var layer: String
    /// The ops that fusion merged into this node, in execution order (`conv1x1 + bn + relu6`).
    public var fusedOps: [String]

    public init(op: Op, inputs: [Int], shape: [Int], parameters: [Parameter] = [],
                name: String, layer: String) {
        self.op = op
        self.inputs = inputs
        self.shape = shape
        self.parameters = parameters
        self.name = name
        self.layer = layer
        self.fusedOps = [op.mnemonic]
    }

    public func parameter(_ role: String) -> Parameter? {
        parameters.first { $0.role == role }
    }

    public var elementCount: Int { shape.reduce(1, *) }
}

/// A float32 tensor bound to a parameter key.
public struct Tensor: Equatable {
    public var shape: [Int]
    public var data: [Float]

    public init(shape: [Int], data: [Float]) {
        self.shape = shape
        self.data = data
    }
}

/// How the network expects its input image to be prepared.
///
/// Two resize conventions exist. With `resizeShorterSide` set (torchvision's `Resize(256)` then
/// `CenterCrop(224)`), the image is resized so its shorter side has that many pixels, then the
/// centre `H×W` is cropped. Without it (TensorFlow's reference pipeline), the centre square of
/// `cropFraction` × the shorter side is cropped and resized to `H×W`. Both resize bilinearly
/// with Pillow's antialiasing filter.
public struct Preprocessing: Equatable {
    public var resizeShorterSide: Int? = nil
    public var cropFraction: Double = 1.0
    /// Per-channel mean and standard deviation in 0...255 pixel units, RGB order:
    /// `input = (pixel - mean) / std`.
    public var mean: [Double] = [123.675, 116.28, 103.53]
    public var std: [Double] = [58.395, 57.12, 57.375]
    /// The layout of the input tensor that the generated code and `mnc run` expect by default.
    public var layout: TensorLayout = .nchw

    public init() {}
}

public enum TensorLayout: String, Equatable {
    case nchw
    case nhwc
}

public struct Graph {
    /// The network name from the spec, usable as a C identifier.
    public var name: String
    public var nodes: [Node]
    /// The index of the node whose value is the network output (logits `[1, classes]`).
    public var output: Int
    /// Values bound to parameter keys; empty until weights are bound.
    public var constants: [String: Tensor] = [:]
    public var preprocessing: Preprocessing

    public init(name: String, nodes: [Node], output: Int, preprocessing: Preprocessing) {
        self.name = name
        self.nodes = nodes
        self.output = output
        self.preprocessing = preprocessing
    }

    public var inputShape: [Int] { nodes[0].shape }
    public var outputShape: [Int] { nodes[output].shape }
}
