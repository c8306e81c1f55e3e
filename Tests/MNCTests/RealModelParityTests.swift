import Foundation
import XCTest
@testable import MNC

/// The interpreter on the real TFLite models and the ONNX exports in `../shared/data`.
final class RealModelParityTests: XCTestCase {
    /// The spec and overrides for each quantized TFLite model.
    let tfliteModels: [(String, String, SpecOverrides)] = [
        ("mobilenet_v1_0.25_128_quant", "tf_mobilenet_v1", SpecOverrides(widthMultiplier: 0.25, inputHeight: 128, inputWidth: 128)),
        ("mobilenet_v1_0.5_160_quant", "tf_mobilenet_v1", SpecOverrides(widthMultiplier: 0.5, inputHeight: 160, inputWidth: 160)),
        ("mobilenet_v2_1.0_224_quant", "tf_mobilenet_v2", SpecOverrides()),
    ]

    /// Each model on each reference image: logits within 1e-3 of the float reference and the
    /// same top-5 classes.
    func testTFLiteModelsMatchReferenceLogits() throws {
        let referenceRoot = try sharedDataPath("reference")
        for (model, spec, overrides) in tfliteModels {
            let graph = try optimize(try bindWeights(path: try sharedDataPath("models/\(model).tflite"),
                                                     to: try loadSpec(spec, overrides)))
            let interpreter = try Interpreter(graph: graph)
            let directory = "\(referenceRoot)/\(model)"
            let images = try FileManager.default.contentsOfDirectory(atPath: directory)
                .filter { $0.hasSuffix(".input.f32") }.sorted()
            XCTAssertEqual(images.count, 4, model)
            for file in images {
                let image = String(file.dropLast(".input.f32".count))
                let shape = graph.inputShape
                let nhwc = try readFloats("\(directory)/\(file)")
                let input = nhwcToNCHW(nhwc, channels: shape[1], height: shape[2], width: shape[3])
                let expected = try readFloats("\(directory)/\(image).logits.f32")
                let logits = try interpreter.run(input: input)
                XCTAssertLessThanOrEqual(maxAbsDifference(logits, expected), 1e-3, "\(model) \(image)")
                XCTAssertEqual(topK(logits, 5), try referenceTop5(path: "\(directory)/\(image).json"), "\(model) \(image)")
            }
        }
    }

    /// Each ONNX export bound to its torchvision-layout spec gives PyTorch's logits within
    /// 1e-4 · max |logit|.
    func testONNXExportsMatchTorchLogits() throws {
        let onnxRoot = try sharedDataPath("onnx")
        let files = try FileManager.default.contentsOfDirectory(atPath: onnxRoot).filter { $0.hasSuffix(".onnx") }.sorted()
        XCTAssertEqual(files.count, 4)
        for file in files {
            let name = String(file.dropLast(5))
            let (spec, overrides) = try torchCase(name)
            let graph = try optimize(try bindWeights(path: "\(onnxRoot)/\(file)", to: try loadSpec(spec, overrides)))
            let directory = try sharedDataPath("torch/\(name)")
            let expected = try readFloats("\(directory)/logits.f32")
            let logits = try Interpreter(graph: graph).run(input: try readFloats("\(directory)/input.f32"))
            XCTAssertLessThanOrEqual(maxAbsDifference(logits, expected), 1e-4 * maxAbs(expected), name)
        }
    }

    func testImagePreprocessingMatchesReferenceInput() throws {
        // The spec's preprocessing line must reproduce the reference pipeline.
        let graph = try loadSpec("tf_mobilenet_v2")
        let image = try sharedDataPath("images/cat_720p.jpg")
        let expected = try readFloats(try sharedDataPath("reference/mobilenet_v2_1.0_224_quant/cat_720p.input.f32"))
        let actual = try loadPreprocessedImage(path: image, height: 224, width: 224,
                                               preprocessing: graphPreprocessing(graph, layout: .nhwc))
        XCTAssertLessThanOrEqual(maxAbsDifference(actual, expected), 1e-6)
    }
}

func topK(_ values: [Float], _ k: Int) -> [Int] {
    Array(values.indices.sorted { values[$0] != values[$1] ? values[$0] > values[$1] : $0 < $1 }.prefix(k))
}

func referenceTop5(path: String) throws -> [Int] {
    let object = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any]
    return object?["float_top5"] as? [Int] ?? []
}
