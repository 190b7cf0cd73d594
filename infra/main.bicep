// Serverless IIS port-scan detector: everything `azd up` (or `az deployment sub create`) deploys.
// A resource group with the Function App (Flex Consumption, Python 3.11) and its managed identity, storage
// and Application Insights; role assignments on the EXISTING Log Analytics workspace that holds W3CIISLog;
// and, per enabled sink, the resources that sink writes to. docs/deploy.md walks through it.
targetScope = 'subscription'

// ---------------------------------------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------------------------------------

@minLength(1)
@maxLength(64)
@description('Name of the azd environment; seeds the unique suffix of every resource name.')
param environmentName string

@minLength(1)
@description('Region of the new resource group and its resources; it must offer the Flex Consumption plan.')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Name of the resource group to create; empty: rg-<environmentName>.')
param resourceGroupName string = ''

@description('Resource id of the EXISTING Log Analytics workspace that holds W3CIISLog: /subscriptions/<id>/resourceGroups/<group>/providers/Microsoft.OperationalInsights/workspaces/<name>.')
@minLength(1)
param logAnalyticsWorkspaceResourceId string

@description('Log Analytics workspace for the app\'s own telemetry (Application Insights); empty: the workspace above.')
param appInsightsWorkspaceResourceId string = ''

// ---------------------------------------------------------------------------------------------------------
// Detector settings (the same names as detector/config.py SETTINGS and local.settings.json.template)
// ---------------------------------------------------------------------------------------------------------

@description('DETECTOR_SCHEDULE: NCRONTAB with 6 fields, UTC. Each run covers every whole 10-minute bin since the last checkpoint.')
param detectorSchedule string = '0 30 0 * * *'

@description('DETECTOR_RULES: rule file, folder of rule files, or rule id (relative to the app root).')
param detectorRules string = 'rules'

@description('DETECTOR_INGESTION_DELAY: how far behind now a window must end (KQL timespan).')
param ingestionDelay string = '30m'

@description('DETECTOR_LOGS_ENDPOINT: Log Analytics query endpoint (sovereign clouds differ).')
param logsEndpoint string = 'https://api.loganalytics.io'

@description('DETECTOR_LOGS_MODE: two-step (count candidates in Kusto, then fetch their rows) or raw.')
@allowed([
  'two-step'
  'raw'
])
param logsMode string = 'two-step'

@description('DETECTOR_LOGS_TABLE: the table queried; also the only table the identity may read (restrictLogReadToTable).')
param logsTable string = 'W3CIISLog'

@description('DETECTOR_LOGS_SERVER_TIMEOUT: server-side query timeout (KQL timespan).')
param logsServerTimeout string = '5m'

@description('DETECTOR_CATCHUP_LIMIT: the most a run catches up after downtime (KQL timespan).')
param catchupLimit string = '7d'

@description('DETECTOR_RECHECK_HORIZON: how far back late-arriving data is re-checked (KQL timespan).')
param recheckHorizon string = '1d'

@description('Limit the identity\'s data read to the logsTable table with an ABAC condition (Log Analytics granular RBAC). Set false if your tenant cannot use conditions there.')
param restrictLogReadToTable bool = true

// ---------------------------------------------------------------------------------------------------------
// The detector's own health (docs/deploy.md: Health alerts)
// ---------------------------------------------------------------------------------------------------------

@description('E-mail address for the health alerts (no successful run, checkpoint lag, skipped lines or parked findings, delivery errors); empty: they fire in Azure Monitor without notifying anyone.')
param healthAlertEmail string = ''

@description('How often the detector runs, as a KQL timespan (the rules\' queryFrequency, 1d for the bundled rules and the daily schedule).')
param healthRunInterval string = '1d'

@description('A rule window, as a KQL timespan (the rules\' queryPeriod): a checkpoint lag above two of them alerts.')
param healthRuleWindow string = '1d'

// ---------------------------------------------------------------------------------------------------------
// Network
// ---------------------------------------------------------------------------------------------------------

@description('Private networking, as the Flex quickstarts do: VNet integration, private endpoints for blob, table and the Key Vault, their private DNS zones, public network access off and default-deny firewalls. Off: public endpoints, Entra-only access.')
param vnetEnabled bool = false

// ---------------------------------------------------------------------------------------------------------
// Sinks. stdout is always on: a plain-text table of the findings in the host log (not JSON).
// ---------------------------------------------------------------------------------------------------------

@description('sentinel sink: create a Microsoft Sentinel incident per finding (needs Sentinel on the workspace).')
param enableSentinelSink bool = false

@description('loganalytics-table sink: write findings to the custom table IISPortScanFindings_CL through a data collection rule.')
param enableLogAnalyticsTableSink bool = false

@description('With the loganalytics-table sink: also create a Sentinel scheduled rule per detector rule over the findings table.')
param enableSentinelAlertRule bool = false

@description('webhook sink: POST findings to a URL kept in Key Vault.')
param enableWebhookSink bool = false

@secure()
@description('The webhook URL (required when enableWebhookSink). Stored only as a Key Vault secret.')
param webhookUrl string = ''

@description('DETECTOR_WEBHOOK_MODE: one request per finding or one per run.')
@allowed([
  'per-finding'
  'per-run'
])
param webhookMode string = 'per-finding'

// ---------------------------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------------------------

var abbrs = loadJsonContent('abbreviations.json')
var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}
var functionAppName = '${abbrs.webSitesFunctions}detector-${resourceToken}'
var deploymentContainerName = 'app-package-${take(functionAppName, 32)}-${take(resourceToken, 7)}'
var stateTableName = 'detectorstate'
var findingsTableName = 'IISPortScanFindings_CL'
var findingsStreamName = 'Custom-${findingsTableName}'
var webhookSecretName = 'detector-webhook-url'

// /subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.OperationalInsights/workspaces/<name>
var workspaceIdParts = split(logAnalyticsWorkspaceResourceId, '/')
var workspaceSubscriptionId = workspaceIdParts[2]
var workspaceResourceGroupName = workspaceIdParts[4]
var workspaceName = workspaceIdParts[8]

// The findings schema is the contract with the loganalytics-table sink's code; both read these files.
var findingsSchema = loadJsonContent('schema/findings-columns.json')
var findingsColumns = findingsSchema.streamDeclarations[findingsStreamName].columns
var findingsAlertRules = loadJsonContent('schema/findings-alert-rules.json')

// ARM endpoint of this cloud, without the trailing slash, as DETECTOR_ARM_ENDPOINT expects.
var armEndpoint = endsWith(environment().resourceManager, '/') ? substring(environment().resourceManager, 0, length(environment().resourceManager) - 1) : environment().resourceManager

// DETECTOR_SINKS: stdout plus each enabled sink, comma-separated.
var sinkNames = [
  'stdout'
  enableSentinelSink ? 'sentinel' : ''
  enableLogAnalyticsTableSink ? 'loganalytics-table' : ''
  enableWebhookSink ? 'webhook' : ''
]
var detectorSinks = join(filter(sinkNames, sink => !empty(sink)), ',')

// ---------------------------------------------------------------------------------------------------------
// Resources
// ---------------------------------------------------------------------------------------------------------

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: !empty(resourceGroupName) ? resourceGroupName : '${abbrs.resourcesResourceGroups}${environmentName}'
  location: location
  tags: tags
}

resource logAnalyticsWorkspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' existing = {
  scope: resourceGroup(workspaceSubscriptionId, workspaceResourceGroupName)
  name: workspaceName
}

module identity 'app/identity.bicep' = {
  name: 'detector-identity'
  scope: rg
  params: {
    name: '${abbrs.managedIdentityUserAssignedIdentities}detector-${resourceToken}'
    location: location
    tags: tags
  }
}

module storage 'app/storage.bicep' = {
  name: 'detector-storage'
  scope: rg
  params: {
    name: '${abbrs.storageStorageAccounts}${resourceToken}'
    location: location
    tags: tags
    deploymentContainerName: deploymentContainerName
    stateTableName: stateTableName
    vnetEnabled: vnetEnabled
  }
}

module network 'app/network.bicep' = if (vnetEnabled) {
  name: 'detector-network'
  scope: rg
  params: {
    name: '${abbrs.networkVirtualNetworks}detector-${resourceToken}'
    location: location
    tags: tags
    storageAccountName: storage.outputs.name
    keyVaultName: enableWebhookSink ? webhookSecret.outputs.name : ''
  }
}

module monitoring 'app/monitoring.bicep' = {
  name: 'detector-monitoring'
  scope: rg
  params: {
    name: '${abbrs.insightsComponents}detector-${resourceToken}'
    location: location
    tags: tags
    workspaceResourceId: !empty(appInsightsWorkspaceResourceId) ? appInsightsWorkspaceResourceId : logAnalyticsWorkspaceResourceId
  }
}

module healthAlerts 'app/health-alerts.bicep' = {
  name: 'detector-health-alerts'
  scope: rg
  params: {
    location: location
    tags: tags
    applicationInsightsName: monitoring.outputs.name
    namePrefix: 'alert-detector-${resourceToken}'
    runInterval: healthRunInterval
    ruleWindow: healthRuleWindow
    alertEmail: healthAlertEmail
  }
}

module webhookSecret 'app/webhook-secret.bicep' = if (enableWebhookSink) {
  name: 'detector-webhook-secret'
  scope: rg
  params: {
    name: '${abbrs.keyVaultVaults}det-${resourceToken}'
    location: location
    tags: tags
    secretName: webhookSecretName
    webhookUrl: webhookUrl
    vnetEnabled: vnetEnabled
  }
}

module findingsTable 'app/findings-table.bicep' = if (enableLogAnalyticsTableSink) {
  name: 'detector-findings-table'
  scope: resourceGroup(workspaceSubscriptionId, workspaceResourceGroupName)
  params: {
    workspaceName: workspaceName
    location: logAnalyticsWorkspace.location
    tags: tags
    tableName: findingsTableName
    streamName: findingsStreamName
    columns: findingsColumns
    dataCollectionRuleName: '${abbrs.insightsDataCollectionRules}detector-findings-${resourceToken}'
    enableAlertRule: enableSentinelAlertRule
    alertRules: findingsAlertRules.rules
    // As in infra/schema/alert-rules/*.yaml: every 5 minutes over a day (the queries de-duplicate).
    alertRuleFrequency: findingsAlertRules.queryFrequency
    alertRulePeriod: findingsAlertRules.queryPeriod
  }
}

module rbac 'app/rbac.bicep' = {
  name: 'detector-rbac'
  scope: rg
  params: {
    principalId: identity.outputs.principalId
    storageAccountName: storage.outputs.name
    stateTableName: storage.outputs.stateTableName
    applicationInsightsName: monitoring.outputs.name
    workspaceSubscriptionId: workspaceSubscriptionId
    workspaceResourceGroupName: workspaceResourceGroupName
    workspaceName: workspaceName
    logsTableName: logsTable
    restrictLogReadToTable: restrictLogReadToTable
    enableSentinelSink: enableSentinelSink
    enableLogAnalyticsTableSink: enableLogAnalyticsTableSink
    findingsDataCollectionRuleName: enableLogAnalyticsTableSink ? findingsTable.outputs.dataCollectionRuleName : ''
    enableWebhookSink: enableWebhookSink
    keyVaultName: enableWebhookSink ? webhookSecret.outputs.name : ''
    webhookSecretName: enableWebhookSink ? webhookSecret.outputs.secretName : ''
  }
}

// The detector's own settings: exactly the names detector/config.py reads (tests/test_infra.py checks it).
// DETECTOR_NOW is local-only (fixture replay) and must never be set in Azure.
var detectorAppSettings = [
  // Core
  { name: 'DETECTOR_SCHEDULE', value: detectorSchedule }
  { name: 'DETECTOR_RULES', value: detectorRules }
  { name: 'DETECTOR_SOURCE', value: 'loganalytics:${logAnalyticsWorkspace.properties.customerId}' }
  { name: 'DETECTOR_COMPUTER', value: '' } // used only by iis: file sources
  { name: 'DETECTOR_STRICT', value: 'false' } // malformed input lines are skipped, counted and reported
  { name: 'DETECTOR_SINKS', value: detectorSinks }
  { name: 'DETECTOR_INGESTION_DELAY', value: ingestionDelay }
  // Log Analytics source
  { name: 'DETECTOR_LOGS_ENDPOINT', value: logsEndpoint }
  { name: 'DETECTOR_LOGS_MODE', value: logsMode }
  { name: 'DETECTOR_LOGS_TABLE', value: logsTable }
  { name: 'DETECTOR_LOGS_SERVER_TIMEOUT', value: logsServerTimeout }
  { name: 'AZURE_CLIENT_ID', value: identity.outputs.clientId }
  // Sinks
  { name: 'DETECTOR_ARM_ENDPOINT', value: armEndpoint }
  { name: 'DETECTOR_SENTINEL_WORKSPACE_RESOURCE_ID', value: enableSentinelSink ? logAnalyticsWorkspaceResourceId : '' }
  { name: 'DETECTOR_INGESTION_ENDPOINT', value: enableLogAnalyticsTableSink ? findingsTable.outputs.logsIngestionEndpoint : '' }
  { name: 'DETECTOR_INGESTION_DCR_IMMUTABLE_ID', value: enableLogAnalyticsTableSink ? findingsTable.outputs.immutableId : '' }
  { name: 'DETECTOR_INGESTION_STREAM', value: findingsStreamName }
  { name: 'DETECTOR_WEBHOOK_URL', value: enableWebhookSink ? '@Microsoft.KeyVault(SecretUri=${webhookSecret.outputs.secretUri})' : '' }
  { name: 'DETECTOR_WEBHOOK_MODE', value: webhookMode }
  // State
  { name: 'DETECTOR_STATE', value: 'table' }
  { name: 'DETECTOR_STATE_TABLE_ENDPOINT', value: storage.outputs.tableEndpoint }
  { name: 'DETECTOR_STATE_TABLE_NAME', value: stateTableName }
  { name: 'DETECTOR_CATCHUP_LIMIT', value: catchupLimit }
  { name: 'DETECTOR_RECHECK_HORIZON', value: recheckHorizon }
]

module detector 'app/detector.bicep' = {
  name: 'detector-app'
  scope: rg
  params: {
    name: functionAppName
    planName: '${abbrs.webServerFarms}detector-${resourceToken}'
    location: location
    tags: tags
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageAccountName: storage.outputs.name
    deploymentContainerName: deploymentContainerName
    applicationInsightsName: monitoring.outputs.name
    detectorAppSettings: detectorAppSettings
    virtualNetworkSubnetId: vnetEnabled ? network.outputs.appSubnetId : ''
  }
  // Start the host only once its identity can reach storage, telemetry and the workspace.
  dependsOn: [
    rbac
  ]
}

// ---------------------------------------------------------------------------------------------------------
// Outputs (azd stores them in the environment; docs/deploy.md uses them)
// ---------------------------------------------------------------------------------------------------------

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_NAME string = detector.outputs.name
output SERVICE_DETECTOR_NAME string = detector.outputs.name
output AZURE_CLIENT_ID string = identity.outputs.clientId
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.name
output DETECTOR_SINKS string = detectorSinks
output DETECTOR_INGESTION_ENDPOINT string = enableLogAnalyticsTableSink ? findingsTable.outputs.logsIngestionEndpoint : ''
output DETECTOR_INGESTION_DCR_IMMUTABLE_ID string = enableLogAnalyticsTableSink ? findingsTable.outputs.immutableId : ''
