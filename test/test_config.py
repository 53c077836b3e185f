"""ModelConfig: validation, round trips through dict/YAML, clear errors."""
import pytest

from cspn_ros.config import PROPAGATIONS, ModelConfig


def test_dict_round_trip_keeps_every_field():
    config = ModelConfig(propagation='cspnpp', width=16, cspnpp_kernel_sizes=(3, 5), steps=8)
    assert ModelConfig.from_dict(config.to_dict()) == config


def test_yaml_file_with_model_section(tmp_path):
    path = tmp_path / 'model.yaml'
    path.write_text('model:\n  propagation: nlspn\n  nlspn_neighbors: 4\n  width: 24\n')
    config = ModelConfig.load(path)
    assert (config.propagation, config.nlspn_neighbors, config.width) == ('nlspn', 4, 24)


@pytest.mark.parametrize('name', PROPAGATIONS)
def test_propagation_name_is_a_config(name):
    assert ModelConfig.load(name).propagation == name


def test_classical_needs_no_weights():
    assert not ModelConfig(propagation='classical').has_weights
    assert ModelConfig().has_weights


@pytest.mark.parametrize('bad, message', [
    ({'propagation': 'dcn'}, 'propagation must be one of'),
    ({'width': 12}, 'multiple of 8'),
    ({'kernel_size': 4}, 'odd'),
    ({'colour': 'red'}, 'unknown model config keys'),
])
def test_invalid_values_name_the_problem(bad, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_dict(bad)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match='neither a file'):
        ModelConfig.load(tmp_path / 'nope.yaml')


def test_model_config_file_that_is_not_a_mapping_says_so(tmp_path):
    for content, words in (('root:x:0:0:root:/root:/bin/bash\n', 'holds a str'),
                           ('- 1\n- 2\n', 'holds a list'),
                           ('width: [8\n', 'not readable JSON/YAML')):
        path = tmp_path / 'config.yaml'
        path.write_text(content)
        with pytest.raises(ValueError, match='model config file') as info:
            ModelConfig.load(path)
        assert words in str(info.value)
    binary = tmp_path / 'config.bin'
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(ValueError, match='not readable JSON/YAML'):
        ModelConfig.load(binary)


def test_parse_setting_reads_name_equals_yaml_value():
    from cspn_ros.config import parse_setting
    assert parse_setting('self_check.holdout_share=0.0') == ('self_check.holdout_share', 0.0)
    assert parse_setting('enabled=false') == ('enabled', False)
    assert parse_setting('cameras=[a, b]') == ('cameras', ['a', 'b'])
    for bad in ('noequals', '=1'):
        with pytest.raises(ValueError, match='NAME=VALUE'):
            parse_setting(bad)
