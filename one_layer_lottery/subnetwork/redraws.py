"""IteRand's redrawn random weights in a compact file: one generation field per weight.

After R rounds (``--rerand-interval``), a redrawable random weight holds at each position the value
of one of the draws 0..R that its (seed, name) gives (masking/rerandomize.py). The file stores
which one, in ``ceil(log2(R + 1))`` bits per weight; the loader draws them again.
"""
from typing import Dict, List, Tuple

import torch

from ..masking import RandomWeight
from ..masking.rerandomize import redrawn_weight, weight_generations
from ..models.one_layer_transformer.state_keys import RERAND_ROUNDS_KEY
from .file_format import pack_fields
from .header_checks import fail


def random_modules(model) -> Dict[str, RandomWeight]:
    """{state-dict key of the weight: its RandomWeight} (a shared weight under each of its keys)."""
    return {f"{name}.weight" if name else "weight": m
            for name, m in model.named_modules(remove_duplicate=False) if isinstance(m, RandomWeight)}


def rounds_done(model) -> int:
    """The IteRand rounds the model's weights went through (0 when the schedule is off)."""
    state = model.state_dict()
    return int(state[RERAND_ROUNDS_KEY]) if RERAND_ROUNDS_KEY in state else 0


def redrawable(model) -> set:
    """ids of the RandomWeights a round may redraw (the layer matrices)."""
    return {id(random) for random, _ in model.rerandomizer.groups}


def generation_entries(model, random_groups: List[List[str]], sections) -> Tuple[List[dict], set]:
    """The header entries (their sections added to ``sections``) of the model's redrawn weights,
    and the first names of the groups they cover. Raises ValueError for a weight that holds
    values none of its draws gives."""
    rounds = rounds_done(model)
    ids = redrawable(model) if rounds else set()
    modules = random_modules(model)
    entries, covered = [], set()
    for names in random_groups:
        random = modules[names[0]]
        if id(random) not in ids:
            continue
        if random.weight.dtype != torch.float32:
            raise ValueError(f"the random weight {names[0]} is {random.weight.dtype}; redrawn weights are stored "
                             "as the float32 draws of their seed")
        generations = weight_generations(random, rounds)
        entry = {"names": names, "shape": list(generations.shape), "rounds": rounds, "bits": rounds.bit_length()}
        entry.update(sections.add(pack_fields(generations, entry["bits"])))
        entries.append(entry)
        covered.add(names[0])
    return entries, covered


def redrawn_state(where, cf, model, rounds: int) -> Dict[str, torch.Tensor]:
    """{state key: redrawn weight} of the file's generation fields, for a model whose stored round
    count is ``rounds``; every weight the rounds may have redrawn must have its field."""
    ids = redrawable(model)
    modules = random_modules(model)
    expected = {names for names in _groups(modules) if rounds and id(modules[names[0]]) in ids}
    out = {}
    for entry in cf.header.get("generations", []):
        names = tuple(sorted(entry["names"]))
        if names not in expected:
            fail(where, f"the generation field {list(names)} is not a redrawable random weight of the model")
        if entry["rounds"] != rounds:
            fail(where, f"the generation field {names[0]} is for {entry['rounds']} rounds, the model's record "
                        f"{RERAND_ROUNDS_KEY} says {rounds}")
        weight = redrawn_weight(modules[names[0]], cf.generations(entry))
        out.update({n: weight for n in names})
        expected.discard(names)
    if expected:
        fail(where, f"{len(expected)} random weights of a model after {rounds} IteRand rounds have no generation "
                    f"field (e.g. {sorted(expected)[0][0]})")
    return out


def _groups(modules: Dict[str, RandomWeight]) -> set:
    by_module: Dict[int, List[str]] = {}
    for key, m in modules.items():
        by_module.setdefault(id(m), []).append(key)
    return {tuple(sorted(keys)) for keys in by_module.values()}
