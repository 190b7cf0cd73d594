"""Offline checks of infra/ (no Bicep compiler here): syntax with tree-sitter-bicep, structure with
pycep-parser, app settings against the names detector/config.py reads, the findings schema contract,
and checkov with a short, justified skip list."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from detector.config import SETTINGS
from tests.bicep_model import INFRA, ROOT, bicep_files, parse, render, resource_body, syntax_problems

MAIN = INFRA / "main.bicep"
APP = INFRA / "app"

# The settings the code reads (detector/config.py SETTINGS): Bicep and the template must set exactly these.
LOCAL_ONLY = frozenset(s.name for s in SETTINGS if s.local_only)
REQUIRED_IN_AZURE = frozenset(s.name for s in SETTINGS if not s.local_only)


def _is_detector_setting(name: str) -> bool:
    return name.startswith("DETECTOR_") or name == "AZURE_CLIENT_ID"


# ----------------------------------------------------------------------------------------------------------
# Syntax
# ----------------------------------------------------------------------------------------------------------


def test_infra_has_the_expected_bicep_files() -> None:
    names = {p.relative_to(INFRA).as_posix() for p in bicep_files()}
    assert {"main.bicep", "app/detector.bicep", "app/rbac.bicep", "app/storage.bicep", "app/monitoring.bicep"} <= names


@pytest.mark.parametrize("path", bicep_files(), ids=lambda p: p.relative_to(INFRA).as_posix())
def test_bicep_file_parses_with_tree_sitter(path: Path) -> None:
    problems = syntax_problems(path.read_bytes())
    assert not problems, f"{path.relative_to(ROOT)}: " + "; ".join(str(p) for p in problems)


@pytest.mark.parametrize("path", bicep_files(), ids=lambda p: p.relative_to(INFRA).as_posix())
def test_bicep_file_parses_with_pycep(path: Path) -> None:
    parsed = parse(path)
    assert parsed.get("resources") or parsed.get("modules"), f"{path.relative_to(ROOT)} declares nothing"


def test_syntax_check_reports_the_line_of_an_error() -> None:
    """The tree-sitter check is real: a missing '=' in a resource declaration is caught on its line."""
    broken = b"param a string\n\nresource st 'Microsoft.Storage/storageAccounts@2023-05-01' {\n  name: a\n}\n"
    problems = syntax_problems(broken)
    assert problems
    assert problems[0].line == 3


def test_main_parameters_file_names_only_declared_parameters() -> None:
    declared = set(parse(MAIN)["parameters"])
    given = set(json.loads((INFRA / "main.parameters.json").read_text())["parameters"])
    assert given <= declared, f"main.parameters.json sets undeclared parameters: {sorted(given - declared)}"
    required = {name for name, p in parse(MAIN)["parameters"].items() if p.get("default") is None}
    assert required <= given, f"main.parameters.json leaves required parameters unset for azd: {sorted(required - given)}"


# ----------------------------------------------------------------------------------------------------------
# Structure: plan, app, identity, storage, telemetry
# ----------------------------------------------------------------------------------------------------------


def _resources_of_type(path: Path, resource_type: str) -> dict[str, dict[str, Any]]:
    return {
        name: resource_body(res)[1]
        for name, res in parse(path)["resources"].items()
        if res["type"] == resource_type and not res.get("existing")
    }


def test_plan_is_flex_consumption_fc1_on_linux() -> None:
    (plan,) = _resources_of_type(APP / "detector.bicep", "Microsoft.Web/serverfarms").values()
    assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    assert plan["properties"]["reserved"] is True


def test_function_app_runs_python_311_as_the_user_assigned_identity_over_https() -> None:
    (site,) = _resources_of_type(APP / "detector.bicep", "Microsoft.Web/sites").values()
    assert site["kind"] == "functionapp,linux"
    assert site["identity"]["type"] == "UserAssigned"
    assert list(site["identity"]["userAssignedIdentities"]) == ["'${identityId}'"]
    props = site["properties"]
    assert props["httpsOnly"] is True
    assert props["keyVaultReferenceIdentity"] == "identityId"
    assert props["siteConfig"]["minTlsVersion"] == "1.2"
    assert props["siteConfig"]["ftpsState"] == "Disabled"
    config = props["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "3.11"}
    deployment = config["deployment"]["storage"]
    assert deployment["type"] == "blobContainer"
    assert deployment["authentication"] == {"type": "UserAssignedIdentity", "userAssignedIdentityResourceId": "identityId"}


def test_publishing_passwords_are_off() -> None:
    policies = _resources_of_type(APP / "detector.bicep", "Microsoft.Web/sites/basicPublishingCredentialsPolicies")
    assert {p["name"]: p["properties"]["allow"] for p in policies.values()} == {"ftp": False, "scm": False}


def test_storage_account_is_entra_only_private_blobs_tls12_https() -> None:
    (account,) = _resources_of_type(APP / "storage.bicep", "Microsoft.Storage/storageAccounts").values()
    props = account["properties"]
    assert props["allowSharedKeyAccess"] is False
    assert props["allowBlobPublicAccess"] is False
    assert props["minimumTlsVersion"] == "TLS1_2"
    assert props["supportsHttpsTrafficOnly"] is True
    assert props["defaultToOAuthAuthentication"] is True
    (container,) = _resources_of_type(APP / "storage.bicep", "Microsoft.Storage/storageAccounts/blobServices/containers").values()
    assert container["properties"]["publicAccess"] == "None"
    (table,) = _resources_of_type(APP / "storage.bicep", "Microsoft.Storage/storageAccounts/tableServices/tables").values()
    assert table["name"] == "stateTableName"


def test_application_insights_has_local_auth_off() -> None:
    (component,) = _resources_of_type(APP / "monitoring.bicep", "Microsoft.Insights/components").values()
    assert component["properties"]["DisableLocalAuth"] is True


def test_the_log_analytics_workspace_is_existing_not_created() -> None:
    for path in bicep_files():
        created = _resources_of_type(path, "Microsoft.OperationalInsights/workspaces")
        assert not created, f"{path.relative_to(ROOT)} creates a workspace; the detector uses an existing one"
    workspace = parse(MAIN)["resources"]["logAnalyticsWorkspace"]
    assert workspace["existing"] is True
    assert render(workspace["config"]["scope"]) == "resource_group(workspaceResourceGroupName, workspaceSubscriptionId)"


# ----------------------------------------------------------------------------------------------------------
# App settings: the names the code reads, identity-based, no keys
# ----------------------------------------------------------------------------------------------------------


def _settings_list(path: Path, variable: str) -> dict[str, Any]:
    """A Bicep `[{ name: ..., value: ... }]` app-settings variable as {name: value}; names must be unique."""
    items = parse(path)["variables"][variable]["value"]
    assert isinstance(items, list)
    assert all(set(item) == {"name", "value"} for item in items), f"{variable}: every item is {{ name, value }}"
    names = [item["name"] for item in items]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert not duplicates, f"{path.name} {variable} sets {duplicates} twice"
    return {item["name"]: item["value"] for item in items}


def _detector_settings() -> dict[str, Any]:
    return _settings_list(MAIN, "detectorAppSettings")


def _host_settings() -> dict[str, Any]:
    return _settings_list(APP / "detector.bicep", "hostAppSettings")


def test_app_settings_are_exactly_detector_and_host_settings() -> None:
    (site,) = _resources_of_type(APP / "detector.bicep", "Microsoft.Web/sites").values()
    assert render(site["properties"]["siteConfig"]["appSettings"]) == "concat(detectorAppSettings, hostAppSettings)"
    assert not _resources_of_type(APP / "detector.bicep", "Microsoft.Web/sites/config"), "one place for app settings"
    _, detector_module = resource_body(parse(MAIN)["modules"]["detector"])
    assert detector_module["params"]["detectorAppSettings"] == "detectorAppSettings"
    assert not set(_detector_settings()) & set(_host_settings())


def test_bicep_sets_every_setting_the_code_reads_and_no_other_detector_setting() -> None:
    in_bicep = set(_detector_settings()) | set(_host_settings())
    missing = REQUIRED_IN_AZURE - in_bicep
    assert not missing, f"settings the code reads but main.bicep detectorAppSettings does not set: {sorted(missing)}"
    local_only = LOCAL_ONLY & in_bicep
    assert not local_only, f"local-only settings must never be set in Azure: {sorted(local_only)}"
    assert "DETECTOR_NOW" not in in_bicep
    unknown = {n for n in in_bicep if _is_detector_setting(n)} - REQUIRED_IN_AZURE
    assert not unknown, f"main.bicep sets settings no code reads (typo?): {sorted(unknown)}"


def test_local_settings_template_sets_every_setting_the_code_reads_and_no_other() -> None:
    values = json.loads((ROOT / "local.settings.json.template").read_text())["Values"]
    missing = REQUIRED_IN_AZURE - set(values)
    assert not missing, f"local.settings.json.template lacks: {sorted(missing)}"
    unknown = {n for n in values if _is_detector_setting(n)} - REQUIRED_IN_AZURE - LOCAL_ONLY
    assert not unknown, f"local.settings.json.template sets settings no code reads: {sorted(unknown)}"


def test_bicep_parameter_defaults_match_the_code_defaults() -> None:
    """Where a setting is a plain parameter, its default is the code's default, so docs cannot drift."""
    parameters = parse(MAIN)["parameters"]
    compared = 0
    for setting in SETTINGS:
        value = _detector_settings().get(setting.name)
        if not isinstance(value, str) or value not in parameters or not setting.default:
            continue
        default = parameters[value].get("default")
        assert default == setting.default, (
            f"{setting.name}: main.bicep param {value} defaults to {default!r}, code to {setting.default!r}"
        )
        compared += 1
    assert compared >= 3  # DETECTOR_SCHEDULE, DETECTOR_RULES, DETECTOR_INGESTION_DELAY at least


def test_detector_settings_point_at_the_deployed_resources() -> None:
    settings = {name: render(value) for name, value in _detector_settings().items()}
    assert settings["DETECTOR_SOURCE"] == "loganalytics:${logAnalyticsWorkspace.properties.customerId}"
    assert settings["AZURE_CLIENT_ID"] == "identity.outputs.clientId"
    assert settings["DETECTOR_SINKS"] == "detectorSinks"
    assert settings["DETECTOR_STATE"] == "table"
    assert settings["DETECTOR_STATE_TABLE_ENDPOINT"] == "storage.outputs.tableEndpoint"
    assert settings["DETECTOR_STATE_TABLE_NAME"] == "stateTableName"
    assert settings["DETECTOR_INGESTION_STREAM"] == "findingsStreamName"
    assert settings["DETECTOR_WEBHOOK_URL"] == (
        "enableWebhookSink ? @Microsoft.KeyVault(SecretUri=${webhookSecret.outputs.secretUri}) : "
    )
    assert settings["DETECTOR_SENTINEL_WORKSPACE_RESOURCE_ID"] == "enableSentinelSink ? logAnalyticsWorkspaceResourceId : "
    variables = parse(MAIN)["variables"]
    assert variables["stateTableName"]["value"] == "detectorstate"
    assert variables["findingsTableName"]["value"] == "IISPortScanFindings_CL"
    assert variables["findingsStreamName"]["value"] == "Custom-${findingsTableName}"  # the sink's default stream


def test_sinks_setting_has_stdout_and_each_enabled_sink() -> None:
    names = render(parse(MAIN)["variables"]["sinkNames"]["value"])
    assert names == (
        "[stdout, enableSentinelSink ? sentinel : , enableLogAnalyticsTableSink ? loganalytics-table : , "
        "enableWebhookSink ? webhook : ]"
    )


def test_host_storage_and_telemetry_use_the_managed_identity() -> None:
    host = {name: render(value) for name, value in _host_settings().items()}
    assert host["AzureWebJobsStorage__credential"] == "managedidentity"
    assert host["AzureWebJobsStorage__clientId"] == "identityClientId"
    assert host["AzureWebJobsStorage__blobServiceUri"] == "storage.properties.primaryEndpoints.blob"
    assert host["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == "ClientId=${identityClientId};Authorization=AAD"
    assert "AzureWebJobsStorage" not in host, "a storage connection string; use AzureWebJobsStorage__* settings"
    # Flex Consumption takes the runtime from functionAppConfig and rejects these settings.
    assert "FUNCTIONS_WORKER_RUNTIME" not in host
    assert "FUNCTIONS_EXTENSION_VERSION" not in host


def test_no_setting_is_a_connection_string_or_key() -> None:
    settings = {**_detector_settings(), **_host_settings()}
    # The one allowed connection string names the App Insights component; with DisableLocalAuth it grants nothing.
    named_like_secrets = {
        n for n in settings if re.search(r"connectionstring|connection_string|key$|password|secret", n, re.IGNORECASE)
    }
    assert named_like_secrets == {"APPLICATIONINSIGHTS_CONNECTION_STRING"}
    assert render(settings["APPLICATIONINSIGHTS_CONNECTION_STRING"]) == "applicationInsights.properties.ConnectionString"


@pytest.mark.parametrize("path", bicep_files(), ids=lambda p: p.relative_to(INFRA).as_posix())
def test_no_keys_are_read_or_written(path: Path) -> None:
    """Parsed code (comments excluded) never lists keys, builds SAS, or carries an instrumentation key."""
    code = json.dumps(parse(path)).lower()
    for forbidden in ("listkeys", "list_keys", "accountkey", "instrumentationkey", "sharedaccesssignature", "list_account_sas"):
        assert forbidden not in code, f"{path.relative_to(ROOT)} uses {forbidden}"


# ----------------------------------------------------------------------------------------------------------
# Role assignments: narrowest scope, guid() names, one per need, sink roles only with their sink
# ----------------------------------------------------------------------------------------------------------

# Built-in role definition ids (the same in every tenant), as rbac.bicep names them.
ROLE_IDS = {
    "storageBlobDataOwnerRoleId": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",  # Storage Blob Data Owner
    "monitoringMetricsPublisherRoleId": "3913510d-42f4-4e42-8a64-420c390055eb",  # Monitoring Metrics Publisher
    "logAnalyticsDataReaderRoleId": "3b03c2da-16b3-4a49-8834-0f8130efdd3b",  # Log Analytics Data Reader
    "keyVaultSecretsUserRoleId": "4633458b-17de-408a-b874-0445c86b69e6",  # Key Vault Secrets User
}

# (file, assignment symbol) -> (role variable, scope, sink flag the assignment is conditioned on)
EXPECTED_ROLE_ASSIGNMENTS = {
    ("rbac.bicep", "hostStorageBlobOwner"): ("storageBlobDataOwnerRoleId", "storageAccount", None),
    ("rbac.bicep", "stateTableEntityWriter"): (
        "stateTableEntitiesRoleId",
        "storageAccount::tableService::stateTable",
        None,
    ),
    ("rbac.bicep", "telemetryPublisher"): ("monitoringMetricsPublisherRoleId", "applicationInsights", None),
    ("rbac.bicep", "webhookSecretReader"): ("keyVaultSecretsUserRoleId", "webhookSecret", "enableWebhookSink"),
    ("rbac-workspace.bicep", "workspaceLogReader"): ("logAnalyticsDataReaderRoleId", "workspace", None),
    ("rbac-workspace.bicep", "workspaceIncidentWriter"): ("sentinelIncidentWriterRoleId", "workspace", "enableSentinelSink"),
    ("rbac-workspace.bicep", "findingsIngestionPublisher"): (
        "monitoringMetricsPublisherRoleId",
        "findingsDataCollectionRule",
        "enableLogAnalyticsTableSink",
    ),
}


def _role_assignments() -> dict[tuple[str, str], tuple[str | None, dict[str, Any]]]:
    found = {}
    for path in bicep_files():
        for name, res in parse(path)["resources"].items():
            if res["type"] == "Microsoft.Authorization/roleAssignments":
                found[(path.name, name)] = resource_body(res)
    return found


def test_role_assignments_are_exactly_the_expected_ones() -> None:
    assert set(_role_assignments()) == set(EXPECTED_ROLE_ASSIGNMENTS)


@pytest.mark.parametrize("key", sorted(EXPECTED_ROLE_ASSIGNMENTS), ids=lambda k: k[1])
def test_role_assignment_is_scoped_named_and_conditioned(key: tuple[str, str]) -> None:
    role_variable, scope, flag = EXPECTED_ROLE_ASSIGNMENTS[key]
    condition, body = _role_assignments()[key]
    assert condition == flag, f"{key[1]}: condition {condition!r}, expected {flag!r}"
    assert render(body.get("scope")) == scope, f"{key[1]}: scope {render(body.get('scope'))!r}, expected {scope!r}"
    # Scoped to one resource declared in the file (existing or new), never a resource group or subscription.
    resources = parse(APP / key[0])["resources"]
    assert scope.replace("::", "__") in resources, f"{key[1]}: scope {scope} is not a resource of {key[0]}"
    assert render(body["name"]) == f"guid({scope}.id, principalId, {role_variable})"
    props = body["properties"]
    assert render(props["roleDefinitionId"]) == (
        f"subscription_resource_id(Microsoft.Authorization/roleDefinitions, {role_variable})"
    )
    assert props["principalId"] == "principalId"
    assert props["principalType"] == "ServicePrincipal"


def test_sink_scopes_exist_only_with_their_sink() -> None:
    workspace_rbac = parse(APP / "rbac-workspace.bicep")["resources"]
    assert "sentinelSolution" not in workspace_rbac  # the custom role on the workspace needs no solution scope
    assert resource_body(workspace_rbac["sentinelIncidentWriterRole"])[0] == "enableSentinelSink"
    assert resource_body(workspace_rbac["findingsDataCollectionRule"])[0] == "enableLogAnalyticsTableSink"
    for name in ("keyVault", "webhookSecret"):
        assert resource_body(parse(APP / "rbac.bicep")["resources"][name])[0] == "enableWebhookSink"


def test_role_ids_are_named_commented_variables_in_rbac_bicep() -> None:
    variables = parse(APP / "rbac.bicep")["variables"]
    assert {name: variables[name]["value"] for name in ROLE_IDS} == ROLE_IDS
    lines = (APP / "rbac.bicep").read_text().splitlines()
    for name in ROLE_IDS:
        (index,) = [i for i, line in enumerate(lines) if line.startswith(f"var {name} =")]
        assert lines[index - 1].startswith("//"), f"rbac.bicep: say which role {name} is and why, in a comment above it"
    # rbac-workspace.bicep receives the same ids as parameters, never its own literals.
    _, module = resource_body(parse(APP / "rbac.bicep")["modules"]["workspaceRoles"])
    for name in ("logAnalyticsDataReaderRoleId", "monitoringMetricsPublisherRoleId"):
        assert module["params"][name] == name
    assert "roleDefinitions', '" not in (APP / "rbac-workspace.bicep").read_text()
    assert not parse(APP / "rbac-workspace.bicep")["variables"].keys() & ROLE_IDS.keys()


# Custom roles: (file, definition symbol, its id variable) -> (actions, dataActions). Exactly what the code
# calls: the sentinel sink GETs and PUTs incidents and PUTs comments; the state store gets, queries,
# inserts, merges and deletes entities. Strings from Microsoft's resource provider operations list.
CUSTOM_ROLES = {
    ("rbac-workspace.bicep", "sentinelIncidentWriterRole", "sentinelIncidentWriterRoleId"): (
        [
            "Microsoft.SecurityInsights/incidents/read",
            "Microsoft.SecurityInsights/incidents/write",
            "Microsoft.SecurityInsights/incidents/comments/write",
        ],
        [],
    ),
    ("rbac.bicep", "stateTableEntitiesRole", "stateTableEntitiesRoleId"): (
        [],
        [
            "Microsoft.Storage/storageAccounts/tableServices/tables/entities/read",
            "Microsoft.Storage/storageAccounts/tableServices/tables/entities/add/action",
            "Microsoft.Storage/storageAccounts/tableServices/tables/entities/update/action",
            "Microsoft.Storage/storageAccounts/tableServices/tables/entities/delete",
        ],
    ),
}


@pytest.mark.parametrize("key", sorted(CUSTOM_ROLES), ids=lambda k: k[1])
def test_custom_roles_allow_only_what_the_code_calls(key: tuple[str, str, str]) -> None:
    file, symbol, id_variable = key
    actions, data_actions = CUSTOM_ROLES[key]
    parsed = parse(APP / file)
    _, body = resource_body(parsed["resources"][symbol])
    assert body["name"] == id_variable
    assert render(parsed["variables"][id_variable]["value"]).startswith("guid(resource_group().id, ")
    props = body["properties"]
    assert props["type"] == "CustomRole"
    (permission,) = props["permissions"]
    assert permission == {"actions": actions, "notActions": [], "dataActions": data_actions, "notDataActions": []}
    assert not any("*" in a for a in actions + data_actions)
    assert [render(s) for s in props["assignableScopes"]] == ["resource_group().id"]
    assert json.dumps(props["roleName"]).endswith(' (${resourceGroup().name})"')  # role names are unique per tenant


def test_the_sentinel_sinks_hint_names_the_deployed_role() -> None:
    from detector.sinks.sentinel import INCIDENT_WRITER_ACTIONS, INCIDENT_WRITER_ROLE

    actions, _ = CUSTOM_ROLES[("rbac-workspace.bicep", "sentinelIncidentWriterRole", "sentinelIncidentWriterRoleId")]
    assert list(INCIDENT_WRITER_ACTIONS) == actions
    _, body = resource_body(parse(APP / "rbac-workspace.bicep")["resources"]["sentinelIncidentWriterRole"])
    assert json.dumps(body["properties"]["roleName"]).startswith(f'"{INCIDENT_WRITER_ROLE} (')


def test_no_built_in_role_broader_than_needed_is_assigned() -> None:
    code = json.dumps([parse(p) for p in bicep_files()])  # parsed: comments may name them
    for broad in (
        "3e150937-b8fe-4cfb-8069-0eaf05ecd056",  # Microsoft Sentinel Responder
        "ab8e14d6-4a74-4a29-9ba8-549422addade",  # Microsoft Sentinel Contributor
        "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",  # Storage Table Data Contributor
        "73c42c96-874c-492b-b04d-ab87d138a893",  # Log Analytics Reader
    ):
        assert broad not in code


def test_log_read_is_limited_to_the_source_table() -> None:
    workspace_rbac = parse(APP / "rbac-workspace.bicep")
    condition = workspace_rbac["variables"]["logReadTableCondition"]["value"]
    assert "!(ActionMatches{\\'Microsoft.OperationalInsights/workspaces/tables/data/read\\'})" in condition
    assert "@Resource[Microsoft.OperationalInsights/workspaces/tables:name] StringEquals \\'${logsTableName}\\'" in condition
    _, body = resource_body(workspace_rbac["resources"]["workspaceLogReader"])
    assert render(body["properties"]["condition"]) == "restrictLogReadToTable ? logReadTableCondition : null"
    assert render(body["properties"]["conditionVersion"]) == "restrictLogReadToTable ? 2.0 : null"
    _, rbac_module = resource_body(parse(MAIN)["modules"]["rbac"])
    assert rbac_module["params"]["logsTableName"] == "logsTable"  # the same parameter as DETECTOR_LOGS_TABLE
    assert _detector_settings()["DETECTOR_LOGS_TABLE"] == "logsTable"


def test_sink_flags_reach_the_role_module() -> None:
    _, rbac_module = resource_body(parse(MAIN)["modules"]["rbac"])
    for flag in ("enableSentinelSink", "enableLogAnalyticsTableSink", "enableWebhookSink"):
        assert rbac_module["params"][flag] == flag
        assert parse(MAIN)["parameters"][flag]["default"] is False, f"{flag} must be off unless asked for"
    _, workspace_module = resource_body(parse(APP / "rbac.bicep")["modules"]["workspaceRoles"])
    for flag in ("enableSentinelSink", "enableLogAnalyticsTableSink"):
        assert workspace_module["params"][flag] == flag
    assert render(workspace_module["scope"]) == "resource_group(workspaceResourceGroupName, workspaceSubscriptionId)"


def test_sink_resources_are_deployed_only_with_their_sink() -> None:
    modules = parse(MAIN)["modules"]
    assert resource_body(modules["findingsTable"])[0] == "enableLogAnalyticsTableSink"
    assert resource_body(modules["webhookSecret"])[0] == "enableWebhookSink"
    alert_rule = parse(APP / "findings-table.bicep")["resources"]["alertRule"]
    # One scheduled rule per detector rule, none unless asked for: `for rule in (enableAlertRule ? alertRules : [])`.
    loop = alert_rule["config"]["loop_type"]["detail"]
    assert (loop["item_name"], render(loop["array_name"])) == ("rule", "enableAlertRule ? alertRules : []")
    assert resource_body(modules["findingsTable"])[1]["params"]["enableAlertRule"] == "enableSentinelAlertRule"


# ----------------------------------------------------------------------------------------------------------
# loganalytics-table sink: custom table + Direct DCR from the shared schema
# ----------------------------------------------------------------------------------------------------------

STREAM_TYPES = frozenset({"string", "int", "long", "real", "boolean", "datetime", "dynamic"})
RESERVED_COLUMNS = frozenset({"_ResourceId", "id", "_SubscriptionId", "TenantId", "Type", "UniqueId", "Title"})


def findings_column_problems(columns: Any) -> list[str]:
    """What is wrong with a findings column list for both a custom table and a DCR stream declaration."""
    if not isinstance(columns, list) or not columns:
        return ["must be a non-empty JSON list of {name, type} objects"]
    problems = []
    seen: set[str] = set()
    for index, column in enumerate(columns):
        # Exactly name and type: a DCR stream declaration accepts no other column property.
        if not isinstance(column, dict) or set(column) != {"name", "type"}:
            problems.append(f"item {index}: must be an object with exactly name and type")
            continue
        name, kind = column["name"], column["type"]
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,44}", str(name)):
            problems.append(f"{name!r}: a column name starts with a letter and has at most 45 letters, digits or _")
        if name in RESERVED_COLUMNS:
            problems.append(f"{name!r}: reserved by Log Analytics")
        if name in seen:
            problems.append(f"{name!r}: duplicate column")
        seen.add(name)
        if kind not in STREAM_TYPES:
            problems.append(f"{name!r}: type {kind!r} is not one of {sorted(STREAM_TYPES)}")
    if {"name": "TimeGenerated", "type": "datetime"} not in [
        {"name": c.get("name"), "type": c.get("type")} for c in columns if isinstance(c, dict)
    ]:
        problems.append("a custom table needs a TimeGenerated column of type datetime")
    return problems


def test_column_validator_accepts_the_shipped_schema() -> None:
    schema = json.loads((INFRA / "schema" / "findings-columns.json").read_text())
    assert findings_column_problems(schema["streamDeclarations"][schema["streamName"]]["columns"]) == []


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        ([], "non-empty"),
        ([{"name": "FindingId", "type": "string"}], "TimeGenerated"),
        ([{"name": "TimeGenerated", "type": "datetime"}, {"name": "Ports", "type": "array"}], "type 'array'"),
        ([{"name": "TimeGenerated", "type": "datetime"}, {"name": "Type", "type": "string"}], "reserved"),
        ([{"name": "TimeGenerated", "type": "datetime"}, {"name": "1st", "type": "string"}], "starts with a letter"),
        ([{"name": "TimeGenerated", "type": "datetime"}, {"name": "TimeGenerated", "type": "datetime"}], "duplicate"),
        ([{"name": "TimeGenerated", "type": "datetime", "description": "when"}], "exactly name and type"),
    ],
)
def test_column_validator_rejects_bad_schemas(columns: Any, expected: str) -> None:
    assert any(expected in problem for problem in findings_column_problems(columns))


def _load_function_path(variable: str) -> Path:
    function = parse(MAIN)["variables"][variable]["value"]["function"]
    return INFRA / str(function["parameters"]["file_path"])


def test_findings_schema_files_exist_and_are_valid() -> None:
    """main.bicep loads the schema the sink's code owns (infra/schema/, written on the sink's branch)."""
    columns_path = _load_function_path("findingsSchema")
    rules_path = _load_function_path("findingsAlertRules")
    assert columns_path == INFRA / "schema" / "findings-columns.json"
    assert rules_path == INFRA / "schema" / "findings-alert-rules.json"
    missing = [p.relative_to(ROOT).as_posix() for p in (columns_path, rules_path) if not p.is_file()]
    assert not missing, f"missing {missing}: main.bicep loads them; python infra/schema/generate.py writes them"
    schema = json.loads(columns_path.read_text())
    assert schema["tableName"] == parse(MAIN)["variables"]["findingsTableName"]["value"]
    # main.bicep gives the table and the DCR the stream declaration's columns (exactly name and type).
    problems = findings_column_problems(schema["streamDeclarations"][f"Custom-{schema['tableName']}"]["columns"])
    assert not problems, f"{columns_path.relative_to(ROOT)}: " + "; ".join(problems)
    alert_rules = json.loads(rules_path.read_text())
    assert alert_rules["rules"], "one alert rule per detector rule"
    for rule in alert_rules["rules"]:
        assert 0 < len(rule["query"].strip()) <= 10_000, "a Sentinel rule query has 1 to 10,000 characters"
        assert "IISPortScanFindings_CL" in rule["query"]
        assert f'RuleId == "{rule["ruleId"]}"' in rule["query"]


def test_table_and_dcr_stream_share_the_column_list() -> None:
    path = APP / "findings-table.bicep"
    (table,) = _resources_of_type(path, "Microsoft.OperationalInsights/workspaces/tables").values()
    assert table["properties"]["schema"] == {"name": "tableName", "columns": "columns"}
    (dcr,) = _resources_of_type(path, "Microsoft.Insights/dataCollectionRules").values()
    assert dcr["kind"] == "Direct"
    props = dcr["properties"]
    assert props["streamDeclarations"] == {"'${streamName}'": {"columns": "columns"}}
    (flow,) = props["dataFlows"]
    assert flow == {
        "streams": ["streamName"],
        "destinations": ["findingsWorkspace"],
        "transformKql": "source",
        "outputStream": "streamName",
    }
    (destination,) = props["destinations"]["logAnalytics"]
    assert render(destination["workspaceResourceId"]) == "workspace.id"
    _, module = resource_body(parse(MAIN)["modules"]["findingsTable"])
    assert module["params"]["columns"] == "findingsColumns"
    assert render(module["params"]["alertRules"]) == "findingsAlertRules.rules"
    assert module["params"]["streamName"] == "findingsStreamName"


def test_findings_ingestion_settings_come_from_the_dcr() -> None:
    settings = {name: render(value) for name, value in _detector_settings().items()}
    assert (
        settings["DETECTOR_INGESTION_ENDPOINT"] == "enableLogAnalyticsTableSink ? findingsTable.outputs.logsIngestionEndpoint : "
    )
    assert settings["DETECTOR_INGESTION_DCR_IMMUTABLE_ID"] == "enableLogAnalyticsTableSink ? findingsTable.outputs.immutableId : "
    outputs = parse(APP / "findings-table.bicep")["outputs"]
    assert render(outputs["logsIngestionEndpoint"]["value"]) == "dataCollectionRule.properties.endpoints.logsIngestion"
    assert render(outputs["immutableId"]["value"]) == "dataCollectionRule.properties.immutableId"


# ----------------------------------------------------------------------------------------------------------
# azd
# ----------------------------------------------------------------------------------------------------------


def test_azd_outputs_and_service() -> None:
    outputs = set(parse(MAIN)["outputs"])
    assert {"AZURE_LOCATION", "AZURE_TENANT_ID", "AZURE_RESOURCE_GROUP", "AZURE_FUNCTION_NAME"} <= outputs
    import yaml

    azure_yaml = yaml.safe_load((ROOT / "azure.yaml").read_text())
    assert azure_yaml["infra"] == {"provider": "bicep", "path": "infra", "module": "main"}
    assert azure_yaml["services"] == {"detector": {"project": ".", "language": "python", "host": "function"}}
    (site,) = _resources_of_type(APP / "detector.bicep", "Microsoft.Web/sites").values()
    assert render(site["tags"]) == "union(tags, {'azd-service-name': detector})"  # azd finds the app by this tag
    assert parse(MAIN)["parameters"]["location"]["decorators"][-1]["type"] == "metadata"


# ----------------------------------------------------------------------------------------------------------
# checkov
# ----------------------------------------------------------------------------------------------------------

# ----------------------------------------------------------------------------------------------------------
# Network: vnetEnabled as the Flex quickstarts do it; the main site serves nothing in either mode
# ----------------------------------------------------------------------------------------------------------


def test_main_site_denies_every_request_and_scm_stays_for_azd() -> None:
    (site,) = _resources_of_type(APP / "detector.bicep", "Microsoft.Web/sites").values()
    config = site["properties"]["siteConfig"]
    assert config["ipSecurityRestrictionsDefaultAction"] == "Deny"
    assert config["ipSecurityRestrictions"] == []
    assert config["scmIpSecurityRestrictionsUseMain"] is False
    assert config["scmIpSecurityRestrictionsDefaultAction"] == "Allow"
    assert render(site["properties"]["virtualNetworkSubnetId"]) == "empty(virtualNetworkSubnetId) ? null : virtualNetworkSubnetId"


def test_vnet_mode_builds_private_endpoints_and_closes_public_access() -> None:
    main = parse(MAIN)
    assert main["parameters"]["vnetEnabled"]["default"] is False
    condition, network = resource_body(main["modules"]["network"])
    assert condition == "vnetEnabled"
    assert render(network["params"]["keyVaultName"]) == "enableWebhookSink ? webhookSecret.outputs.name : "
    for module in ("storage", "webhookSecret"):
        assert resource_body(main["modules"][module])[1]["params"]["vnetEnabled"] == "vnetEnabled"
    _, app = resource_body(main["modules"]["detector"])
    assert render(app["params"]["virtualNetworkSubnetId"]) == "vnetEnabled ? network.outputs.appSubnetId : "

    net = parse(APP / "network.bicep")
    (vnet,) = _resources_of_type(APP / "network.bicep", "Microsoft.Network/virtualNetworks").values()
    subnets = {s["name"]: s["properties"] for s in vnet["properties"]["subnets"]}
    delegations = [d["properties"]["serviceName"] for d in subnets["appSubnetName"]["delegations"]]
    assert delegations == ["Microsoft.App/environments"]
    assert all("networkSecurityGroup" in props for props in subnets.values())
    groups = [e["groupId"] for e in net["variables"]["storageEndpoints"]["value"]]
    assert groups == ["blob", "table"]
    zones = [render(e["zone"]) for e in net["variables"]["storageEndpoints"]["value"]]
    assert zones == ["privatelink.blob.${environment().suffixes.storage}", "privatelink.table.${environment().suffixes.storage}"]
    vault_pe = resource_body(net["resources"]["vaultPrivateEndpoint"])[1]
    assert vault_pe["properties"]["privateLinkServiceConnections"][0]["properties"]["groupIds"] == ["vault"]
    assert net["variables"]["vaultZone"]["value"] == "privatelink.vaultcore.azure.net"

    (storage,) = _resources_of_type(APP / "storage.bicep", "Microsoft.Storage/storageAccounts").values()
    props = storage["properties"]
    assert render(props["publicNetworkAccess"]) == "vnetEnabled ? Disabled : Enabled"
    assert render(props["networkAcls"]["defaultAction"]) == "vnetEnabled ? Deny : Allow"
    (vault,) = _resources_of_type(APP / "webhook-secret.bicep", "Microsoft.KeyVault/vaults").values()
    assert render(vault["properties"]["publicNetworkAccess"]) == "vnetEnabled ? Disabled : Enabled"
    assert render(vault["properties"]["networkAcls"]["defaultAction"]) == "vnetEnabled ? Deny : Allow"


CHECKOV_CONFIG = ROOT / ".checkov.yaml"
_SKIP_LINE = re.compile(r"^  - (CKV2?_[A-Z]+_\d+)\s+#\s*(.+)$")


def checkov_skips() -> dict[str, str]:
    """The skip list of .checkov.yaml: check id -> reason (the comment on its line)."""
    config = yaml.safe_load(CHECKOV_CONFIG.read_text(encoding="utf-8"))
    reasons = {}
    for line in CHECKOV_CONFIG.read_text(encoding="utf-8").splitlines():
        match = _SKIP_LINE.match(line)
        if match:
            reasons[match.group(1)] = match.group(2).strip()
    assert sorted(reasons) == sorted(config["skip-check"]), "every skip-check line carries its reason as a comment"
    return reasons


def test_every_checkov_skip_has_a_reason() -> None:
    skips = checkov_skips()
    assert skips
    for check, reason in skips.items():
        assert len(reason.removeprefix("[network]").strip()) > 20, f"{check}: say why it does not apply"
    config = yaml.safe_load(CHECKOV_CONFIG.read_text(encoding="utf-8"))
    assert config["framework"] == ["bicep"]


def vnet_rendered_copy(target: Path) -> Path:
    """infra/ as deployed with vnetEnabled=true: the parameter defaults to true and every
    `vnetEnabled ? a : b` is replaced by a, so checkov sees the values that mode deploys."""
    copy = target / "infra"
    shutil.copytree(INFRA, copy)
    ternary = re.compile(r"vnetEnabled \? ('[^']*'|[\w.]+) : ('[^']*'|[\w.]+)")
    for path in copy.rglob("*.bicep"):
        text = path.read_text(encoding="utf-8")
        rendered = ternary.sub(r"\1", text.replace("param vnetEnabled bool = false", "param vnetEnabled bool = true"))
        path.write_text(rendered, encoding="utf-8")
    return copy


@pytest.fixture(scope="module")
def checkov() -> str:
    """The checkov executable (a test using this fixture is marked `checkov`: see conftest.py)."""
    executable = os.environ.get("CHECKOV") or shutil.which("checkov")
    if not executable:
        pytest.fail(
            "checkov not found. It conflicts with the dev pins, so install it in its own venv: "
            "python3.11 -m venv /opt/venv-checkov && /opt/venv-checkov/bin/pip install -r requirements-infra.txt, "
            "then set CHECKOV=/opt/venv-checkov/bin/checkov (or put checkov on PATH). See requirements-infra.txt."
        )
    return executable


def run_checkov(checkov: str, directory: Path, cwd: Path) -> dict[str, Any]:
    """checkov -d directory, run from cwd (where it looks for .checkov.yaml); its bicep report."""
    result = subprocess.run(
        [checkov, "-d", str(directory), "-o", "json"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=cwd,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )
    assert result.stdout.strip(), f"checkov printed nothing (exit {result.returncode}): {result.stderr[-2000:]}"
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    (bicep,) = [r for r in reports if r.get("check_type") == "bicep"]
    summary = bicep["summary"]
    assert summary["parsing_errors"] == 0, f"checkov could not parse {summary['parsing_errors']} file(s): {result.stderr[-2000:]}"
    assert summary["resource_count"] >= 20
    assert summary["passed"] > 0
    assert isinstance(bicep, dict)
    return bicep


def _failed(report: dict[str, Any]) -> set[str]:
    return {c["check_id"] for c in report["results"].get("failed_checks", [])}


def test_standalone_checkov_reports_nothing_failed(checkov: str) -> None:
    """What a pipeline runs: `checkov -d infra` from the repository root, which reads .checkov.yaml."""
    report = run_checkov(checkov, Path("infra"), ROOT)
    failed = sorted(
        f"{c['check_id']} {c['check_name']} ({c['file_path']}: {c['resource']})"
        for c in report["results"].get("failed_checks", [])
    )
    assert not failed, "checkov failures (fix them, or skip in .checkov.yaml with a reason):\n" + "\n".join(failed)


def test_network_skips_apply_only_without_a_vnet(checkov: str, tmp_path: Path) -> None:
    """With vnetEnabled=true and no skips at all, exactly the non-network skips fail: the [network] checks
    pass there, and every other skip is still needed."""
    skips = checkov_skips()
    network = {check for check, reason in skips.items() if reason.startswith("[network]")}
    assert network, "the skip list marks its network skips"
    report = run_checkov(checkov, vnet_rendered_copy(tmp_path), tmp_path)  # no .checkov.yaml in tmp_path: no skips
    assert _failed(report) == set(skips) - network
    passed = {c["check_id"] for c in report["results"].get("passed_checks", [])}
    assert network <= passed, f"network checks not passing with vnetEnabled=true: {sorted(network - passed)}"


# ----------------------------------------------------------------------------------------------------------
# Health alerts over the detector.summary traces
# ----------------------------------------------------------------------------------------------------------

HEALTH = INFRA / "health"
# Summary keys other work adds to RunSummary.to_json (reading files and the outbox); the alerts read two of
# them. Once they are in to_json, this set no longer matters: the test below reads the real keys first.
SUMMARY_KEYS_BEING_ADDED = frozenset({"rowsRead", "skippedLines", "parked", "steppedAside", "deadlineReached"})


def _summary_message(extra: dict[str, Any] | None = None, **fields: Any) -> str:
    from detector.runner import RunSummary

    content = RunSummary(source="loganalytics:workspace", **fields).to_json()
    content.update(extra or {})
    return "detector.summary " + json.dumps(content)


def _run_health_query(name: str, traces: list[tuple[Any, str]]) -> list[tuple[Any, ...]]:
    import duckdb_kql
    import pyarrow as pa

    schema = pa.schema([("timestamp", pa.timestamp("us")), ("message", pa.string())])
    trace_rows = pa.table({"timestamp": [t for t, _ in traces], "message": [m for _, m in traces]}, schema=schema)  # noqa: F841
    con = duckdb_kql.connect()
    con.execute("CREATE TABLE traces AS SELECT * FROM trace_rows")
    return duckdb_kql.kql(con, (HEALTH / f"{name}.kql").read_text(encoding="utf-8")).fetchall()


def test_health_queries_read_only_keys_the_summary_has() -> None:
    from detector.runner import RunSummary

    written = set(RunSummary(source="x").to_json())
    for path in sorted(HEALTH.glob("*.kql")):
        read = set(re.findall(r"summary\.(\w+)", path.read_text(encoding="utf-8")))
        assert read, f"{path.name} reads the summary"
        assert read - written <= SUMMARY_KEYS_BEING_ADDED, f"{path.name} reads keys no run writes: {read - written}"


def test_health_queries_fire_exactly_on_their_problem() -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC).replace(tzinfo=None)
    rule = "44a555d8-ecee-4a25-95ce-055879b4b14b"
    healthy = (now - timedelta(hours=2), _summary_message(lag_seconds={rule: 3600.0}))
    names = ("no-successful-run", "checkpoint-lag", "input-problems", "delivery-errors")
    assert {n: _run_health_query(n, [healthy]) for n in names} == {name: [] for name in names}

    # No success for a day and an hour: fires; nothing at all in the window: fires too.
    stale = (now - timedelta(hours=26), healthy[1])
    assert len(_run_health_query("no-successful-run", [stale])) == 1
    assert len(_run_health_query("no-successful-run", [])) == 1

    failed = (now - timedelta(minutes=5), _summary_message(delivery_errors={"webhook:per-run": "the webhook answered 410"}))
    (alert,) = _run_health_query("delivery-errors", [healthy, failed])
    assert json.loads(alert[1]) == {"webhook:per-run": "the webhook answered 410"}
    assert len(_run_health_query("no-successful-run", [stale, failed])) == 1  # the latest run failed
    source_error = (now, _summary_message(errors={rule: "HTTP 403"}))
    assert len(_run_health_query("delivery-errors", [source_error])) == 1

    lagging = (now, _summary_message(lag_seconds={rule: 2 * 86400.0 + 1, "other-rule": 60.0}))
    assert [(r[1], r[2]) for r in _run_health_query("checkpoint-lag", [healthy, lagging])] == [(rule, 2 * 86400.0 + 1)]
    caught_up = (now + timedelta(seconds=1), _summary_message(lag_seconds={rule: 3600.0}))
    assert _run_health_query("checkpoint-lag", [lagging, caught_up]) == []  # the latest lag counts

    skipped = (now, _summary_message({"skippedLines": 3}))
    entry = {"sink": "webhook:per-finding", "findingId": "f", "ruleId": rule, "attempts": 3, "error": "HTTP 400"}
    parked = (now, _summary_message(parked=[entry], parked_held={"webhook:per-finding": 1}))
    held = (now, _summary_message(parked_held={"webhook:per-finding": 1}))  # parked by an earlier run, still held
    found = [r[1:4] for r in _run_health_query("input-problems", [healthy, skipped, parked, held])]
    assert found == [(3, 0, "{}"), (0, 1, '{"webhook:per-finding":1}'), (0, 0, '{"webhook:per-finding":1}')]


def test_health_alerts_deploy_the_shipped_queries() -> None:
    main = parse(MAIN)
    condition, module = resource_body(main["modules"]["healthAlerts"])
    assert condition is None  # always deployed; the e-mail only decides who is told
    assert module["params"]["alertEmail"] == "healthAlertEmail"
    assert main["parameters"]["healthAlertEmail"]["default"] == ""
    health = parse(APP / "health-alerts.bicep")
    alerts = health["variables"]["alerts"]["value"]
    assert sorted(a["name"] for a in alerts) == sorted(p.stem for p in HEALTH.glob("*.kql"))
    text = (APP / "health-alerts.bicep").read_text(encoding="utf-8")
    for path in HEALTH.glob("*.kql"):
        assert f"loadTextContent('../health/{path.name}')" in text
    # The let lines the Bicep rewrites from its parameters are exactly in the files.
    assert "let runInterval = 1d;" in (HEALTH / "no-successful-run.kql").read_text(encoding="utf-8")
    assert "'let runInterval = 1d;'" in text
    assert "let maxLagSeconds = 172800;" in (HEALTH / "checkpoint-lag.kql").read_text(encoding="utf-8")
    assert "'let maxLagSeconds = 172800;'" in text
    (rules,) = _resources_of_type(APP / "health-alerts.bicep", "Microsoft.Insights/scheduledQueryRules").values()
    assert render(rules["properties"]["scopes"][0]) == "applicationInsights.id"
    (group,) = _resources_of_type(APP / "health-alerts.bicep", "Microsoft.Insights/actionGroups").values()
    assert group["properties"]["emailReceivers"][0]["emailAddress"] == "alertEmail"


# ----------------------------------------------------------------------------------------------------------
# Supply chain: what deploys is pinned with hashes; floors past the advisories; nothing local shipped
# ----------------------------------------------------------------------------------------------------------


def _pins() -> dict[str, tuple[str, list[str]]]:
    """requirements.txt: name -> (exact version, hashes)."""
    pins: dict[str, tuple[str, list[str]]] = {}
    text = (ROOT / "requirements.txt").read_text(encoding="utf-8").replace("\\\n", " ")
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        assert not line.startswith("-"), f"requirements.txt: option line {line!r} (no index, find-links or path options)"
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)((?:\s+--hash=sha256:[0-9a-f]{64})+)", line)
        assert match, f"requirements.txt: {line[:80]!r} is not an exact pin with hashes"
        pins[match.group(1).lower().replace("_", "-")] = (match.group(2), re.findall(r"sha256:([0-9a-f]{64})", match.group(3)))
    return pins


def test_deployed_requirements_are_exact_pins_with_hashes_of_what_requirements_in_asks() -> None:
    from packaging.requirements import Requirement

    pins = _pins()
    assert len(pins) >= 10
    wanted = [
        Requirement(line.split("#", 1)[0].strip())
        for line in (ROOT / "requirements.in").read_text(encoding="utf-8").splitlines()
        if line.split("#", 1)[0].strip()
    ]
    for requirement in wanted:
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"{name} is in requirements.in but not pinned: run `make requirements`"
        assert requirement.specifier.contains(pins[name][0]), f"{name}=={pins[name][0]} breaks {requirement}: `make requirements`"


@pytest.mark.parametrize(
    ("package", "floor", "advisory"),
    [
        ("azure-core", "1.38.0", "CVE-2026-21226 / GHSA-jm66-cg57-jjv5"),
        ("azure-identity", "1.16.1", "CVE-2024-35255"),
        ("cryptography", "46.0.5", "CVE-2026-26007"),
    ],
)
def test_floors_are_past_the_last_advisories(package: str, floor: str, advisory: str) -> None:
    from packaging.requirements import Requirement
    from packaging.version import Version

    lines = (ROOT / "requirements.in").read_text(encoding="utf-8").splitlines()
    (line,) = [line for line in lines if line.startswith(package + ">")]
    requirement = Requirement(line.split("#", 1)[0].strip())
    below = Version(floor)
    floors = [Version(spec.version) for spec in requirement.specifier if spec.operator == ">="]
    assert floors and min(floors) >= below, f"{package}: floor {floors} must be at least {floor} ({advisory})"
    assert Version(_pins()[package][0]) >= below


def test_dev_requirements_install_without_the_hashed_file() -> None:
    """pip turns on hash checking for every line once one line has a hash; the dev tools have none."""
    dev = (ROOT / "requirements-dev.txt").read_text(encoding="utf-8")
    assert "-r requirements.in" in dev.splitlines()
    assert "-r requirements.txt" not in dev.splitlines()
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "--generate-hashes" in makefile and "--no-emit-find-links" in makefile


@pytest.mark.parametrize("ignore_file", [".gitignore", ".funcignore"])
def test_local_state_and_tool_files_are_neither_committed_nor_deployed(ignore_file: str) -> None:
    entries = {line.strip().rstrip("/") for line in (ROOT / ignore_file).read_text(encoding="utf-8").splitlines()}
    assert {".detector-state", ".azure", "__azurite_db_*"} <= entries
