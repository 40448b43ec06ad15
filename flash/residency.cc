#include "flash/residency.h"

#include <algorithm>

#include "absl/strings/str_format.h"

namespace sparse_mlp::flash {

ResidencyPlanner::ResidencyPlanner(size_t neurons, size_t capacity, size_t window)
    : window_(std::max<size_t>(1, window)),
      slot_of_(neurons, kNoSlot),
      neuron_of_(std::min(capacity, neurons), kNoSlot),
      last_active_(neurons, 0),
      in_mask_(neurons, 0),
      guessed_(neurons, 0),
      pinned_(neurons, 0) {
  const size_t c = neuron_of_.size();
  guessed_list_.reserve(neurons);
  hits_.reserve(c);
  guessed_hits_.reserve(c);
  entering_.reserve(c);
  entering_slots_.reserve(c);
  candidates_.reserve(c);
  free_.reserve(c);
}

absl::Status ResidencyPlanner::Pin(absl::Span<const uint32_t> neurons) {
  const size_t n = slot_of_.size();
  if (neurons.size() >= neuron_of_.size()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%d pinned neurons leave no slot of %d for the rest", neurons.size(), neuron_of_.size()));
  }
  for (size_t k = 0; k < neurons.size(); ++k) {
    if (neurons[k] >= n || (k > 0 && neurons[k] <= neurons[k - 1])) {
      return absl::InvalidArgumentError(
          absl::StrFormat("pinned index %d at position %d is out of range [0, %d) or not ascending",
                          neurons[k], k, n));
    }
  }
  std::fill(pinned_.begin(), pinned_.end(), 0);
  pinned_resident_ = 0;
  pinned_count_ = neurons.size();
  for (uint32_t j : neurons) {
    pinned_[j] = 1;
    pinned_resident_ += slot_of_[j] != kNoSlot;
  }
  return absl::OkStatus();
}

void ResidencyPlanner::Free(uint32_t slot) {
  pinned_resident_ -= pinned_[neuron_of_[slot]];
  uint8_t& g = guessed_[neuron_of_[slot]];
  if (g == 1) g = 2;  // listed, no longer resident
  slot_of_[neuron_of_[slot]] = kNoSlot;
  neuron_of_[slot] = kNoSlot;
  --resident_;
}

void ResidencyPlanner::Unload(uint32_t neuron) {
  if (neuron < slot_of_.size() && slot_of_[neuron] != kNoSlot) Free(slot_of_[neuron]);
}

absl::Status ResidencyPlanner::Plan(absl::Span<const uint32_t> mask, ResidencyPlan* plan) {
  return PlanImpl(mask, /*guess=*/false, {}, plan);
}

absl::Status ResidencyPlanner::PlanGuess(absl::Span<const uint32_t> mask, ResidencyPlan* plan,
                                         absl::Span<const uint32_t> rank) {
  return PlanImpl(mask, /*guess=*/true, rank, plan);
}

absl::Status ResidencyPlanner::PlanImpl(absl::Span<const uint32_t> mask, bool guess,
                                        absl::Span<const uint32_t> rank, ResidencyPlan* plan) {
  const size_t n = slot_of_.size(), c = neuron_of_.size();
  if (mask.size() > c) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "the mask holds %d neurons but the budget gives this layer %d slots", mask.size(), c));
  }
  for (size_t k = 0; k < mask.size(); ++k) {
    if (mask[k] >= n || (k > 0 && mask[k] <= mask[k - 1])) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "mask index %d at position %d is out of range [0, %d) or not ascending", mask[k], k, n));
    }
  }
  if (!guess && pinned_resident_ > 0) {  // pinned neurons outside the mask keep their slots
    size_t inside = 0;
    for (uint32_t j : mask) inside += pinned_[j] && slot_of_[j] != kNoSlot;
    if (mask.size() + pinned_resident_ - inside > c) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "the mask holds %d neurons but %d of the layer's %d slots hold pinned neurons outside "
          "it",
          mask.size(), pinned_resident_ - inside, c));
    }
  }
  if (!rank.empty()) {  // a permutation of the mask (in_mask_: 1 in it, 2 seen in the rank)
    for (uint32_t j : mask) in_mask_[j] = 1;
    size_t k = 0;
    bool ok = rank.size() == mask.size();
    for (; ok && k < rank.size(); ++k) {
      ok = rank[k] < n && in_mask_[rank[k]] == 1;
      if (ok) in_mask_[rank[k]] = 2;
    }
    for (uint32_t j : mask) in_mask_[j] = 0;
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "the guess's rank (%d neurons) is not an order of its mask (%d neurons): entry %d "
          "(neuron %d) is not in the mask or repeats",
          rank.size(), mask.size(), k == 0 ? 0 : k - 1, k == 0 ? 0 : rank[k - 1]));
    }
  }
  // A guess joins the latest token (nothing expires: the window does not
  // move); a mask is a new token. last_active_ holds token numbers from 1.
  const uint64_t now = guess ? std::max<uint64_t>(token_, 1) : ++token_;
  hits_.clear();
  guessed_hits_.clear();
  entering_.clear();
  for (uint32_t j : mask) {
    in_mask_[j] = 1;
    last_active_[j] = std::max(last_active_[j], now);
    if (slot_of_[j] != kNoSlot) {
      (!guess && guessed_[j] == 1 ? guessed_hits_ : hits_).push_back(slot_of_[j]);
    } else {
      entering_.push_back(j);
    }
  }
  // Expire what left the window; collect free slots and eviction candidates.
  size_t expired = 0;
  free_.clear();
  candidates_.clear();
  for (uint32_t s = 0; s < c; ++s) {
    const uint32_t j = neuron_of_[s];
    if (j == kNoSlot) {
      free_.push_back(s);
    } else if (!in_mask_[j] && !pinned_[j]) {
      if (!guess && last_active_[j] + window_ <= now) {
        Free(s);
        free_.push_back(s);
        ++expired;
      } else if (!guess || last_active_[j] < now) {
        candidates_.push_back(s);  // a guess never evicts the latest token's neurons
      }
    }
  }
  // A guess takes the free slots and, of the older neurons' (oldest first),
  // at most as many as the latest token let in: about what the next token
  // would evict anyway, so wrong guesses cost their reads, not later misses.
  const size_t room = free_.size() + std::min(candidates_.size(), last_entering_);
  if (guess && room < entering_.size()) {
    // What does not fit is not fetched (and keeps no mark of this guess):
    // the first in the rank fit, or the lower neurons.
    if (!rank.empty()) {
      for (uint32_t j : entering_) in_mask_[j] = 2;
      size_t kept = 0;
      for (size_t k = 0; k < rank.size() && kept < room; ++k) {
        if (in_mask_[rank[k]] == 2) {
          in_mask_[rank[k]] = 3;
          ++kept;
        }
      }
      size_t w = 0;
      for (uint32_t j : entering_) {
        if (in_mask_[j] == 3) {
          entering_[w++] = j;
        } else {
          last_active_[j] = 0;
        }
        in_mask_[j] = 1;
      }
      entering_.resize(w);
    } else {
      for (size_t k = room; k < entering_.size(); ++k) last_active_[entering_[k]] = 0;
      entering_.resize(room);
    }
  }
  // Evict the least recently active until the entering neurons fit.
  size_t evicted = 0;
  if (free_.size() < entering_.size()) {
    const size_t need = entering_.size() - free_.size();
    auto older = [&](uint32_t a, uint32_t b) {
      const uint32_t ja = neuron_of_[a], jb = neuron_of_[b];
      if (last_active_[ja] != last_active_[jb]) return last_active_[ja] < last_active_[jb];
      const bool ga = guessed_[ja] == 1, gb = guessed_[jb] == 1;
      return ga != gb ? gb : ja < jb;
    };
    std::nth_element(candidates_.begin(), candidates_.begin() + (need - 1), candidates_.end(),
                     older);
    for (size_t k = 0; k < need; ++k) {
      Free(candidates_[k]);
      free_.push_back(candidates_[k]);
    }
    evicted = need;
  }
  std::sort(free_.begin(), free_.end());
  entering_slots_.assign(free_.begin(), free_.begin() + entering_.size());
  for (size_t k = 0; k < entering_.size(); ++k) {
    slot_of_[entering_[k]] = entering_slots_[k];
    neuron_of_[entering_slots_[k]] = entering_[k];
  }
  resident_ += entering_.size();
  if (pinned_resident_ < pinned_count_) {
    for (uint32_t j : entering_) pinned_resident_ += pinned_[j];
  }
  for (uint32_t j : mask) in_mask_[j] = 0;
  if (guess) {
    for (uint32_t j : entering_) {
      if (guessed_[j] == 0) guessed_list_.push_back(j);  // distinct: at most I
      guessed_[j] = 1;
    }
  } else {  // a token: the guesses before it are answered
    last_entering_ = entering_.size();
    for (uint32_t j : guessed_list_) guessed_[j] = 0;
    guessed_list_.clear();
  }
  std::sort(hits_.begin(), hits_.end());
  std::sort(guessed_hits_.begin(), guessed_hits_.end());
  plan->hit_slots = hits_;
  plan->guessed_hit_slots = guessed_hits_;
  plan->entering = entering_;
  plan->entering_slots = entering_slots_;
  plan->evicted = evicted;
  plan->expired = expired;
  return absl::OkStatus();
}

}  // namespace sparse_mlp::flash
