/// The parsed form of a `.mnet` architecture spec, before width and resolution are applied.
///
/// A spec is a header (network name, input size, class count, width multiplier, conventions)
/// followed by layer statements in execution order. The MobileNet tables (V1 separable rows,
/// V2 `t c n s` rows, V3 `bneck` rows) are kept as rows, exactly as the file writes them.
/// `lower(_:)` turns them into graph nodes.
public struct Spec {
    public var file: String
    public var name: String
    public var inputHeight: Int
    public var inputWidth: Int
    public var inputChannels: Int
    public var classes: Int
    public var widthMultiplier: Double
    public var rounding: ChannelRounding
    public var padding: PaddingMode
    public var batchNormEpsilon: Float
    public var preprocessing: Preprocessing
    /// MobileNetV3's `reduced_tail`: halves the channels of the last stage and of the head.
    public var reducedTail: Bool
    public var layers: [LayerStatement]
    /// The location of each header field, for errors about its value.
    public var headerLocations: [String: SourceLocation]
}

/// The rule that scales a channel count `c` by the width multiplier α.
public enum ChannelRounding: Equatable {
    /// torchvision's and TF-slim V2's `_make_divisible(c·α, divisor)`: the nearest multiple of
    /// `divisor`, at least `divisor`, bumped up by one `divisor` when rounding loses more than 10%.
    case makeDivisible(divisor: Int)
    /// TF-slim V1: `max(floor(c·α), minimum)`.
    case floor(minimum: Int)

    public func apply(_ channels: Double) -> Int {
        switch self {
        case .makeDivisible(let divisor):
            return MNC.makeDivisible(channels, divisor: divisor)
        case .floor(let minimum):
            return Swift.max(Int(channels.rounded(.down)), minimum)
        }
    }
}

/// `_make_divisible` as torchvision and TF-slim define it.
public func makeDivisible(_ value: Double, divisor: Int) -> Int {
    let d = Double(divisor)
    var rounded = Swift.max(d, ((value + d / 2) / d).rounded(.down) * d)
    if rounded < 0.9 * value {
        rounded += d
    }
    return Int(rounded)
}

/// The padding convention of every convolution.
public enum PaddingMode: String, Equatable {
    /// PyTorch: `(k - 1) / 2` on every side.
    case symmetric
    /// TensorFlow `SAME`: total `max((ceil(H / s) - 1) · s + k - H, 0)`, the smaller half before.
    case same
}

/// A layer's output channel count as the spec writes it.
public enum ChannelCount: Equatable {
    /// A count scaled by α with the spec's rounding.
    case scaled(Int)
    /// A count scaled by `max(1, α)`: MobileNetV2's last convolution keeps 1280 channels for α < 1.
    case scaledUpOnly(Int)
    /// A count that α does not change.
    case fixed(Int)
    /// The network's class count.
    case classes
    /// A multiple of the input's channel count (MobileNetV3's head: 6 × the last block's output).
    case timesInput(Int)
}

public struct ConvStatement {
    public var kernel: Int
    public var stride: Int
    public var out: ChannelCount
    public var activation: Activation
    public var hasBias: Bool
    public var hasBatchNorm: Bool
    public var location: SourceLocation
}

/// A MobileNetV1 depthwise-separable row: depthwise 3×3 (stride `s`) + BN + act, pointwise to
/// `c` + BN + act, repeated `n` times (stride 1 after the first).
public struct SeparableRow {
    public var channels: Int
    public var repeats: Int
    public var stride: Int
    public var location: SourceLocation
}

/// A MobileNetV2 inverted-residual row `t c n s`.
public struct InvertedResidualRow {
    public var expansion: Double
    public var channels: Int
    public var repeats: Int
    public var stride: Int
    public var location: SourceLocation
}

/// A MobileNetV3 `bneck` row as torchvision writes it:
/// `input_c kernel expanded_c out_c use_se activation stride`.
public struct BottleneckRow {
    public var inputChannels: Int
    public var kernel: Int
    public var expandedChannels: Int
    public var outChannels: Int
    public var useSqueezeExcite: Bool
    public var activation: Activation
    public var stride: Int
    public var location: SourceLocation
}

public enum LayerStatement {
    case conv(ConvStatement)
    case separable(activation: Activation, rows: [SeparableRow], location: SourceLocation)
    case invertedResidual(activation: Activation, rows: [InvertedResidualRow], location: SourceLocation)
    case bottleneck(squeezeGate: Activation, rows: [BottleneckRow], location: SourceLocation)
    case globalAveragePool(location: SourceLocation)
    case dropout(probability: Float, location: SourceLocation)
    case linear(out: ChannelCount, activation: Activation, hasBias: Bool, location: SourceLocation)
}

/// Values that the command line may override in a spec.
public struct SpecOverrides {
    public var widthMultiplier: Double?
    public var inputHeight: Int?
    public var inputWidth: Int?
    public var classes: Int?

    public init(widthMultiplier: Double? = nil, inputHeight: Int? = nil, inputWidth: Int? = nil,
                classes: Int? = nil) {
        self.widthMultiplier = widthMultiplier
        self.inputHeight = inputHeight
        self.inputWidth = inputWidth
        self.classes = classes
    }
}

extension Spec {
    /// Applies command-line overrides, validating them as the spec's own values are validated.
    public func applying(_ overrides: SpecOverrides) throws -> Spec {
        var spec = self
        if let alpha = overrides.widthMultiplier {
            guard alpha > 0, alpha.isFinite, alpha <= 16 else {
                throw MNCError("invalid width multiplier \(alpha): expected a number in (0, 16]")
            }
            spec.widthMultiplier = alpha
        }
        if let height = overrides.inputHeight { spec.inputHeight = height }
        if let width = overrides.inputWidth { spec.inputWidth = width }
        if overrides.inputHeight != nil || overrides.inputWidth != nil {
            // Errors about the input size then name the option, not the spec's 'input' line.
            spec.headerLocations["input"] = nil
        }
        if let classes = overrides.classes {
            guard classes >= 1, classes <= 1_000_000 else {
                throw MNCError("invalid class count \(classes): expected an integer in 1...1000000")
            }
            spec.classes = classes
        }
        for size in [spec.inputHeight, spec.inputWidth] where size < 1 || size > 16384 {
            throw MNCError("invalid input size \(spec.inputHeight)x\(spec.inputWidth): expected 1...16384 pixels per side")
        }
        return spec
    }
}

extension LayerStatement {
    /// The statement's first token in the spec file.
    public var location: SourceLocation {
        switch self {
        case .conv(let statement): return statement.location
        case .separable(_, _, let location), .invertedResidual(_, _, let location), .bottleneck(_, _, let location):
            return location
        case .globalAveragePool(let location), .dropout(_, let location), .linear(_, _, _, let location):
            return location
        }
    }
}
