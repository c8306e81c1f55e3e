let inspectCommand = Command(
    name: "inspect",
    usage: "mnc inspect WEIGHTS",
    summary: """
    List the tensors in a weights file (name, element type, shape): safetensors, PyTorch .pth,
    TFLite or ONNX. Model files also list their operators.
    """,
    options: [],
    run: { arguments, output in
        guard arguments.positionals.count == 1 else {
            throw MNCError("'mnc inspect' takes one weights file, found \(arguments.positionals.count) arguments")
        }
        output.write(try describeWeights(path: arguments.positionals[0]))
        return 0
    })

/// Returns the listing `mnc inspect` prints for a weights file of any supported format.
func describeWeights(path: String) throws -> String {
    switch try detectWeightFormat(path: path) {
    case .stateDict:
        return describeWeightFile(try loadWeightFile(path: path))
    case .tflite:
        return describeTFLite(try TFLiteModel.load(path: path))
    case .onnx:
        return describeONNX(try ONNXModel.load(path: path))
    }
}
