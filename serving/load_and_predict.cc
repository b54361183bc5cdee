// Loads a SavedModel the way a model server does and prints its predictions.
//
// This is the C++ path of TensorFlow Serving without the server: it loads the
// memrec_tf op library (when given), loads the SavedModel under a tag with
// tensorflow::LoadSavedModel, reads the input and output tensor names from a
// SignatureDef and runs the session. It shows that an export runs outside
// Python, and that a fused export needs nothing but the op library.
//
// Usage:
//   load_and_predict --export_dir DIR [--op_library LIB.so]
//       --input NAME=FILE [--input NAME=FILE ...]
//       [--tag serve] [--signature serving_default] [--output KEY]
//
// Each --input names a signature input and a text file with one example per
// line, the example's values separated by commas (a [B, 4] int64 input has
// four integers per line; a [B] input one value per line). Values are parsed
// as the signature's dtype: int32/int64 ids, float/double features, or
// strings (taken as written, less surrounding blanks; they cannot contain
// commas). Every input file must have the same number of lines.
//
// Output: one line per example, the example's values of the output tensor
// (the only output, or --output KEY) separated by commas, printed with 9
// significant digits. Diagnostics go to stderr; the exit status is 0 on
// success, 1 on a load or run error, 2 on a usage error.
//
// Build: serving/build_cpp.sh (g++ against the TensorFlow wheel's
// libtensorflow_cc.so.2 and libtensorflow_framework.so.2).
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "tensorflow/c/c_api.h"
#include "tensorflow/cc/saved_model/loader.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/framework/types.pb.h"
#include "tensorflow/core/protobuf/meta_graph.pb.h"
#include "tensorflow/core/public/session.h"
#include "tensorflow/core/public/session_options.h"

namespace {

constexpr int kUsageError = 2;
constexpr int kRunError = 1;

struct Options {
  std::string export_dir;
  std::vector<std::string> op_libraries;
  std::vector<std::pair<std::string, std::string>> inputs;  // name, file
  std::string tag = "serve";
  std::string signature = "serving_default";
  std::string output;
};

void PrintUsage() {
  std::cerr << "usage: load_and_predict --export_dir DIR [--op_library LIB.so]\n"
               "    --input NAME=FILE [--input NAME=FILE ...]\n"
               "    [--tag serve] [--signature serving_default] [--output KEY]\n";
}

// Accepts "--flag value" and "--flag=value".
bool ParseArgs(int argc, char** argv, Options* options) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    std::string value;
    const size_t eq = arg.find('=');
    if (arg.rfind("--", 0) == 0 && eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      std::cerr << "error: " << arg << " needs a value\n";
      return false;
    }
    if (arg == "--export_dir") {
      options->export_dir = value;
    } else if (arg == "--op_library") {
      options->op_libraries.push_back(value);
    } else if (arg == "--tag") {
      options->tag = value;
    } else if (arg == "--signature") {
      options->signature = value;
    } else if (arg == "--output") {
      options->output = value;
    } else if (arg == "--input") {
      const size_t split = value.find('=');
      if (split == std::string::npos || split == 0) {
        std::cerr << "error: --input must be NAME=FILE, got '" << value << "'\n";
        return false;
      }
      options->inputs.emplace_back(value.substr(0, split), value.substr(split + 1));
    } else {
      std::cerr << "error: unknown flag '" << arg << "'\n";
      return false;
    }
  }
  if (options->export_dir.empty() || options->inputs.empty()) {
    std::cerr << "error: --export_dir and at least one --input are required\n";
    return false;
  }
  return true;
}

std::string Trim(const std::string& s) {
  const size_t begin = s.find_first_not_of(" \t\r");
  if (begin == std::string::npos) return "";
  const size_t end = s.find_last_not_of(" \t\r");
  return s.substr(begin, end - begin + 1);
}

// The non-empty lines of `path`, each split on commas.
bool ReadRows(const std::string& path, std::vector<std::vector<std::string>>* rows) {
  std::ifstream in(path);
  if (!in) {
    std::cerr << "error: cannot read input file " << path << "\n";
    return false;
  }
  std::string line;
  while (std::getline(in, line)) {
    if (Trim(line).empty()) continue;
    std::vector<std::string> cells;
    std::stringstream stream(line);
    std::string cell;
    while (std::getline(stream, cell, ',')) cells.push_back(Trim(cell));
    rows->push_back(std::move(cells));
  }
  return true;
}

template <typename T>
bool ParseNumber(const std::string& text, T* out) {
  std::istringstream stream(text);
  stream >> *out;
  return !stream.fail() && stream.eof();
}

// Builds the tensor for one signature input from the rows of its file: shape
// [rows] + the signature's trailing dimensions (unknown ones from the file).
bool MakeTensor(const std::string& name, const tensorflow::TensorInfo& info,
                const std::vector<std::vector<std::string>>& rows,
                tensorflow::Tensor* tensor) {
  const int64_t batch = static_cast<int64_t>(rows.size());
  const size_t width = rows.empty() ? 0 : rows[0].size();
  for (size_t r = 0; r < rows.size(); ++r) {
    if (rows[r].size() != width) {
      std::cerr << "error: input '" << name << "' line " << r + 1 << " has "
                << rows[r].size() << " values, line 1 has " << width << "\n";
      return false;
    }
  }
  tensorflow::TensorShape shape({batch});
  const auto& dims = info.tensor_shape().dim();
  if (info.tensor_shape().unknown_rank()) {
    shape.AddDim(static_cast<int64_t>(width));
  } else {
    int64_t known = 1;
    int unknown = -1;
    for (int d = 1; d < dims.size(); ++d) {
      if (dims[d].size() < 0) {
        if (unknown >= 0) {
          std::cerr << "error: input '" << name << "' has more than one unknown "
                    << "non-batch dimension; cannot infer its shape from a file\n";
          return false;
        }
        unknown = d;
      } else {
        known *= dims[d].size();
      }
    }
    for (int d = 1; d < dims.size(); ++d) {
      int64_t size = dims[d].size();
      if (d == unknown) size = known > 0 ? static_cast<int64_t>(width) / known : 0;
      shape.AddDim(size);
    }
    const int64_t per_row =
        dims.size() <= 1 ? 1 : shape.num_elements() / std::max<int64_t>(batch, 1);
    if (batch > 0 && static_cast<int64_t>(width) != per_row) {
      std::cerr << "error: input '" << name << "' expects " << per_row
                << " values per line (signature shape "
                << tensorflow::PartialTensorShape(info.tensor_shape()).DebugString()
                << "), got " << width << "\n";
      return false;
    }
  }
  *tensor = tensorflow::Tensor(info.dtype(), shape);
  int64_t i = 0;
  for (const auto& row : rows) {
    for (const auto& cell : row) {
      bool ok = true;
      switch (info.dtype()) {
        case tensorflow::DT_INT64:
          ok = ParseNumber(cell, &tensor->flat<int64_t>()(i));
          break;
        case tensorflow::DT_INT32:
          ok = ParseNumber(cell, &tensor->flat<int32_t>()(i));
          break;
        case tensorflow::DT_FLOAT:
          ok = ParseNumber(cell, &tensor->flat<float>()(i));
          break;
        case tensorflow::DT_DOUBLE:
          ok = ParseNumber(cell, &tensor->flat<double>()(i));
          break;
        case tensorflow::DT_STRING:
          tensor->flat<tensorflow::tstring>()(i) = cell;
          break;
        default:
          std::cerr << "error: input '" << name << "' has dtype "
                    << tensorflow::DataType_Name(info.dtype())
                    << "; supported: int32, int64, float, double, string\n";
          return false;
      }
      if (!ok) {
        std::cerr << "error: input '" << name << "': cannot parse '" << cell << "' as "
                  << tensorflow::DataType_Name(info.dtype()) << "\n";
        return false;
      }
      ++i;
    }
  }
  return true;
}

// A fused export run without its op library fails with TensorFlow's bare
// "Op type not registered"; say which flag fixes it.
void PrintMemRecHint(const tensorflow::Status& status) {
  if (status.ToString().find("Op type not registered 'MemRec") != std::string::npos) {
    std::cerr << "hint: this is a memrec_tf export with mode='fused': pass "
                 "--op_library PATH/TO/_memrec_ops*.so (python -c 'import "
                 "memrec_tf.ops as o; print(o.library_path())'), or re-export "
                 "with mode='core'\n";
  }
}

void PrintRows(const tensorflow::Tensor& tensor) {
  const int64_t batch = tensor.dims() == 0 ? 1 : tensor.dim_size(0);
  const int64_t per_row = batch == 0 ? 0 : tensor.NumElements() / batch;
  std::cout << std::setprecision(9);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t j = 0; j < per_row; ++j) {
      if (j > 0) std::cout << ",";
      const int64_t i = b * per_row + j;
      switch (tensor.dtype()) {
        case tensorflow::DT_FLOAT: std::cout << tensor.flat<float>()(i); break;
        case tensorflow::DT_DOUBLE: std::cout << tensor.flat<double>()(i); break;
        case tensorflow::DT_INT64: std::cout << tensor.flat<int64_t>()(i); break;
        case tensorflow::DT_INT32: std::cout << tensor.flat<int32_t>()(i); break;
        case tensorflow::DT_STRING: std::cout << tensor.flat<tensorflow::tstring>()(i); break;
        default: std::cout << "?"; break;
      }
    }
    std::cout << "\n";
  }
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  if (!ParseArgs(argc, argv, &options)) {
    PrintUsage();
    return kUsageError;
  }

  // TF_LoadLibrary registers the library's ops and kernels with this
  // process's registries, as tf.load_op_library does in Python.
  for (const auto& path : options.op_libraries) {
    TF_Status* status = TF_NewStatus();
    TF_Library* library = TF_LoadLibrary(path.c_str(), status);
    if (TF_GetCode(status) != TF_OK) {
      std::cerr << "error: cannot load op library " << path << ": "
                << TF_Message(status) << "\n";
      TF_DeleteStatus(status);
      return kRunError;
    }
    TF_DeleteStatus(status);
    (void)library;  // Kept loaded for the life of the process.
  }

  tensorflow::SavedModelBundle bundle;
  tensorflow::SessionOptions session_options;
  tensorflow::RunOptions run_options;
  const tensorflow::Status load_status = tensorflow::LoadSavedModel(
      session_options, run_options, options.export_dir, {options.tag}, &bundle);
  if (!load_status.ok()) {
    std::cerr << "error: cannot load SavedModel " << options.export_dir << ": "
              << load_status.ToString() << "\n";
    PrintMemRecHint(load_status);
    return kRunError;
  }

  const auto& signatures = bundle.meta_graph_def.signature_def();
  const auto found = signatures.find(options.signature);
  if (found == signatures.end()) {
    std::cerr << "error: no SignatureDef '" << options.signature << "'; available:";
    for (const auto& entry : signatures) std::cerr << " " << entry.first;
    std::cerr << "\n";
    return kRunError;
  }
  const tensorflow::SignatureDef& signature = found->second;

  std::vector<std::pair<std::string, tensorflow::Tensor>> feeds;
  int64_t batch = -1;
  for (const auto& [name, path] : options.inputs) {
    const auto info = signature.inputs().find(name);
    if (info == signature.inputs().end()) {
      std::cerr << "error: signature '" << options.signature << "' has no input '"
                << name << "'; inputs:";
      for (const auto& entry : signature.inputs()) std::cerr << " " << entry.first;
      std::cerr << "\n";
      return kUsageError;
    }
    std::vector<std::vector<std::string>> rows;
    if (!ReadRows(path, &rows)) return kUsageError;
    if (batch >= 0 && static_cast<int64_t>(rows.size()) != batch) {
      std::cerr << "error: input '" << name << "' has " << rows.size()
                << " lines, the previous inputs have " << batch << "\n";
      return kUsageError;
    }
    batch = static_cast<int64_t>(rows.size());
    tensorflow::Tensor tensor;
    if (!MakeTensor(name, info->second, rows, &tensor)) return kUsageError;
    feeds.emplace_back(info->second.name(), std::move(tensor));
  }
  for (const auto& entry : signature.inputs()) {
    bool given = false;
    for (const auto& input : options.inputs) given |= input.first == entry.first;
    if (!given) {
      std::cerr << "error: signature input '" << entry.first << "' has no --input\n";
      return kUsageError;
    }
  }

  std::string output_key = options.output;
  if (output_key.empty()) {
    if (signature.outputs().size() != 1) {
      std::cerr << "error: the signature has " << signature.outputs().size()
                << " outputs; choose one with --output:";
      for (const auto& entry : signature.outputs()) std::cerr << " " << entry.first;
      std::cerr << "\n";
      return kUsageError;
    }
    output_key = signature.outputs().begin()->first;
  }
  const auto output = signature.outputs().find(output_key);
  if (output == signature.outputs().end()) {
    std::cerr << "error: the signature has no output '" << output_key << "'\n";
    return kUsageError;
  }

  std::vector<tensorflow::Tensor> outputs;
  const tensorflow::Status run_status =
      bundle.session->Run(feeds, {output->second.name()}, {}, &outputs);
  if (!run_status.ok()) {
    std::cerr << "error: running signature '" << options.signature
              << "' failed: " << run_status.ToString() << "\n";
    PrintMemRecHint(run_status);
    return kRunError;
  }
  PrintRows(outputs[0]);
  return 0;
}
