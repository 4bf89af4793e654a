// prumux_infer: run a prumux-deploy ONNX engine from C++ with ONNX Runtime's C++ API.
//
//   prumux_infer [--isolation shared|request] ENGINE_DIR IDS_FILE
//
// ENGINE_DIR is what `prumux-deploy export` wrote (model.onnx, labels.txt). IDS_FILE holds one row of
// token ids per line, separated by spaces, as `prumux-deploy predict ENGINE "text" --ids-out IDS_FILE`
// writes them (rows padded with 0 to the same length; 0 is [PAD], so the attention mask is ids != 0).
// Prints one line per row: the label, then the logits. Mux padding, multiplexing and demultiplexing
// happen inside the graph, so any number of rows works.
//
// --isolation shared (default): the rows share mux groups N at a time, so a row's answer depends on its
// neighbours. --isolation request: every row is a request of its own; it is repeated N times so that its
// mux group holds only itself (what the graph does for a lone row), and its answer is what running it alone
// gives. N is read from manifest.json's num_instances.

#include <onnxruntime_cxx_api.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <regex>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

static std::vector<std::vector<int64_t>> read_ids(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": cannot be opened");
  std::vector<std::vector<int64_t>> rows;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::vector<int64_t> row;
    int64_t id;
    while (fields >> id) row.push_back(id);
    if (!row.empty()) rows.push_back(row);
  }
  if (rows.empty()) throw std::runtime_error(path + ": no token ids");
  for (const auto& row : rows)
    if (row.size() != rows.front().size())
      throw std::runtime_error(path + ": rows must have the same length (pad with 0)");
  return rows;
}

static std::vector<std::string> read_labels(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": cannot be opened; re-export the engine");
  std::vector<std::string> labels;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) labels.push_back(line);
  return labels;
}

static int64_t read_num_instances(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": cannot be opened; re-export the engine");
  std::stringstream text;
  text << in.rdbuf();
  const std::string json = text.str();
  std::smatch found;
  if (!std::regex_search(json, found, std::regex("\"num_instances\"\\s*:\\s*([0-9]+)")))
    throw std::runtime_error(path + ": no num_instances; re-export the engine");
  return std::stoll(found[1]);
}

int main(int argc, char** argv) {
  bool isolate = false;
  int first = 1;
  if (argc == 5 && std::strcmp(argv[1], "--isolation") == 0 &&
      (std::strcmp(argv[2], "shared") == 0 || std::strcmp(argv[2], "request") == 0)) {
    isolate = std::strcmp(argv[2], "request") == 0;
    first = 3;
  }
  if (argc - first != 2) {
    std::cerr << "usage: prumux_infer [--isolation shared|request] ENGINE_DIR IDS_FILE\n";
    return 2;
  }
  try {
    const std::string dir = argv[first];
    auto rows = read_ids(argv[first + 1]);
    const auto labels = read_labels(dir + "/labels.txt");
    // request isolation: row r becomes rows r*N .. r*N+N-1, a mux group of its own; logits row r*N is its answer
    const int64_t repeat = isolate ? read_num_instances(dir + "/manifest.json") : 1;
    if (repeat > 1) {
      std::vector<std::vector<int64_t>> repeated;
      for (const auto& row : rows) repeated.insert(repeated.end(), repeat, row);
      rows.swap(repeated);
    }
    const int64_t batch = static_cast<int64_t>(rows.size());
    const int64_t seq = static_cast<int64_t>(rows.front().size());

    std::vector<int64_t> ids, mask;  // [batch, seq], row-major
    for (const auto& row : rows)
      for (int64_t id : row) {
        ids.push_back(id);
        mask.push_back(id != 0 ? 1 : 0);
      }

    Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "prumux_infer");
    Ort::SessionOptions options;
    options.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
    Ort::Session session(env, (dir + "/model.onnx").c_str(), options);

    auto memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    const std::array<int64_t, 2> shape{batch, seq};
    std::vector<Ort::Value> inputs;
    inputs.push_back(Ort::Value::CreateTensor<int64_t>(memory, ids.data(), ids.size(), shape.data(), shape.size()));
    inputs.push_back(Ort::Value::CreateTensor<int64_t>(memory, mask.data(), mask.size(), shape.data(), shape.size()));
    std::vector<int64_t> types(ids.size(), 0);  // used only by sentence-pair engines
    std::vector<const char*> input_names{"input_ids", "attention_mask"};
    if (session.GetInputCount() == 3) {
      inputs.push_back(
          Ort::Value::CreateTensor<int64_t>(memory, types.data(), types.size(), shape.data(), shape.size()));
      input_names.push_back("token_type_ids");
    }
    const char* output_names[] = {"logits"};
    auto outputs = session.Run(Ort::RunOptions{nullptr}, input_names.data(), inputs.data(), inputs.size(),
                               output_names, 1);

    const auto out_shape = outputs[0].GetTensorTypeAndShapeInfo().GetShape();  // [batch, num_labels]
    const float* logits = outputs[0].GetTensorData<float>();
    const int64_t classes = out_shape[1];
    std::cout << std::fixed << std::setprecision(6);
    for (int64_t r = 0; r < out_shape[0]; r += repeat) {
      int64_t best = 0;
      for (int64_t c = 1; c < classes; ++c)
        if (logits[r * classes + c] > logits[r * classes + best]) best = c;
      std::cout << (best < static_cast<int64_t>(labels.size()) ? labels[best] : std::to_string(best));
      for (int64_t c = 0; c < classes; ++c) std::cout << ' ' << logits[r * classes + c];
      std::cout << '\n';
    }
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << '\n';
    return 1;
  }
  return 0;
}
