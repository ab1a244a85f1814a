import Foundation
import KVCTensor
import Testing

/// Shape mismatches are programmer errors and trap; these exit tests run each mistake in a child process and check
/// that the trap message names the op and the shapes, in the optimised build the project runs in.
@Suite struct ShapeErrorTests {
    @Test func matmulInnerDimensionMismatchNamesBothShapes() async {
        let result = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            _ = matmul(Tensor.zeros([2, 3]), Tensor.zeros([4, 5]))
        }
        let stderr = String(decoding: result?.standardErrorContent ?? [], as: UTF8.self)
        #expect(stderr.contains("matmul") && stderr.contains("[2, 3]") && stderr.contains("[4, 5]"), "\(stderr)")
    }

    @Test func broadcastMismatchNamesBothShapes() async {
        let result = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            _ = Tensor.zeros([2, 3]) + Tensor.zeros([4])
        }
        let stderr = String(decoding: result?.standardErrorContent ?? [], as: UTF8.self)
        #expect(stderr.contains("add") && stderr.contains("[2, 3]") && stderr.contains("[4]"), "\(stderr)")
    }

    @Test func linearWeightMismatchNamesShapes() async {
        let result = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            _ = linear(Tensor.zeros([8, 5]), weight: Tensor.zeros([3, 4]))
        }
        let stderr = String(decoding: result?.standardErrorContent ?? [], as: UTF8.self)
        #expect(stderr.contains("linear") && stderr.contains("[8, 5]") && stderr.contains("[3, 4]"), "\(stderr)")
    }

    @Test func badReshapeNamesShapes() async {
        let result = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            _ = Tensor.zeros([2, 3]).reshaped([4, 2])
        }
        let stderr = String(decoding: result?.standardErrorContent ?? [], as: UTF8.self)
        #expect(stderr.contains("reshape") && stderr.contains("[2, 3]") && stderr.contains("[4, 2]"), "\(stderr)")
    }
}
